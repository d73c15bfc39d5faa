// The engine's GEMM kernel (ops/gemm_kernel.h): at every native level it equals the scalar FMA
// reference bitwise, for row-major and transposed operands, accumulation, partial tiles, k
// chunks and the in-place (unpacked B) path; the epilogue sees every output element exactly once,
// after its final value is written; the baseline level (library) agrees to tolerance. The expert
// FFN's fused inference path gives the bits of its two-pass forward.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/ops/expert_ffn.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/simd.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

struct SimdGuard {
  SimdTarget saved = simd_target();
  ~SimdGuard() { set_simd_target(saved); }
};

struct Shape3 {
  int64_t m, n, k;
};

// Shapes that hit full and partial row blocks and panels, several k chunks, the in-place B path
// (m <= 32, with its short chunks: 8 rows for m <= 2, 32 with a remainder for 5 and 8 rows), the
// four-panel kernels for one and two rows, one row times a transposed B (its own path, with
// 16- and 8-row blocks, leftover rows and k), 2-16 rows times a transposed B (read in place: 8 and
// 16 lanes, full and partial blocks of W rows, k not a multiple of 16), more than one A block (m >
// 512), and a long k that shortens the packed A block to bound its memory. A row-major B whose
// column group is whole panels is packed by the first row block's calls (micro_copy): with one
// and several k chunks, and a last row block too short for it ({520, 64, 600}: 512 + 8 rows).
const Shape3 kShapes[] = {
    {1, 1, 1},       {1, 2048, 512}, {1, 100, 13},  {2, 130, 40},  {3, 100, 7},    {6, 16, 256},
    {12, 32, 257},   {16, 96, 600},  {17, 33, 513}, {40, 300, 70}, {130, 200, 64}, {600, 70, 300},
    {60, 20, 24000}, {5, 70, 100},   {8, 64, 45},   {1, 120, 29},  {520, 64, 600}, {47, 96, 1100}};

void check_level(SimdTarget level) {
  SimdGuard guard;
  set_simd_target(level);
  ASSERT_TRUE(kernel_gemm_native());
  uint64_t seed = 1;
  for (const auto& s : kShapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (bool acc : {false, true}) {
          SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k
                                          << " ta=" << ta << " tb=" << tb << " acc=" << acc);
          const Tensor a = random_tensor({s.m * s.k}, seed++),
                       b = random_tensor({s.k * s.n}, seed++);
          const MatRef ar = ta ? MatRef::transposed(a.data(), s.m) : MatRef::rows(a.data(), s.k);
          const MatRef br = tb ? MatRef::transposed(b.data(), s.k) : MatRef::rows(b.data(), s.n);
          const int64_t ldc = s.n + 3;  // a leading dimension wider than the rows
          Tensor c = random_tensor({s.m * ldc}, seed++), want = c;
          std::vector<int> seen(static_cast<size_t>(s.m * s.n), 0);
          bool final_values = true;
          const GemmEpilogue epi = [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
            for (int64_t i = r0; i < r0 + rows; ++i)
              for (int64_t j = c0; j < c0 + cols; ++j) {
                ++seen[static_cast<size_t>(i * s.n + j)];
                // Every k contributed already: the value must be final here.
                final_values &= c[i * ldc + j] == want[i * ldc + j];
              }
          };
          gemm_fma_reference(s.m, s.n, s.k, ar, br, want.data(), ldc, acc);
          kernel_gemm(s.m, s.n, s.k, ar, br, c.data(), ldc, acc, &epi);
          EXPECT_TRUE(final_values);
          for (int64_t i = 0; i < s.m; ++i)
            for (int64_t j = 0; j < ldc; ++j)
              ASSERT_EQ(c[i * ldc + j], want[i * ldc + j]) << "element " << i << ", " << j;
          for (int v : seen) ASSERT_EQ(v, 1);
        }
}

TEST(GemmKernel, Avx2EqualsFmaReferenceBitwise) {
  if (!simd_supported(SimdTarget::kAvx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  check_level(SimdTarget::kAvx2);
}

TEST(GemmKernel, Avx512EqualsFmaReferenceBitwise) {
  if (!simd_supported(SimdTarget::kAvx512)) GTEST_SKIP() << "no AVX-512 on this CPU";
  check_level(SimdTarget::kAvx512);
}

// Weights packed once (PackedWeights) give the same bits as packing per call: for a stack of two
// matrices, from the first column and from a later panel boundary, at every native level.
void check_packed(SimdTarget level) {
  SimdGuard guard;
  set_simd_target(level);
  const int64_t nr = level == SimdTarget::kAvx512 ? 32 : 16;
  uint64_t seed = 100;
  for (const auto& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "m=" << s.m << " n=" << s.n << " k=" << s.k);
    const Tensor w = random_tensor({2 * s.k * s.n}, seed++), a = random_tensor({s.m * s.k}, seed++);
    PackedWeights packed;
    packed.pack(2, s.k, s.n, w.data(), s.k * s.n);
    ASSERT_FALSE(packed.empty());
    for (int64_t g : {0, 1})
      for (int64_t c0 : {int64_t{0}, nr}) {
        if (c0 >= s.n) continue;
        const float* panels = packed.panels(g, c0, s.k);
        ASSERT_NE(panels, nullptr);
        const MatRef b = MatRef::rows(w.data() + g * s.k * s.n + c0, s.n);
        const int64_t n = s.n - c0;
        for (bool acc : {false, true}) {  // from two rows on, a few rows read the panels too
          Tensor c = random_tensor({s.m * n}, seed++), want = c;
          gemm_fma_reference(s.m, n, s.k, MatRef::rows(a.data(), s.k), b, want.data(), n, acc);
          kernel_gemm(s.m, n, s.k, MatRef::rows(a.data(), s.k), b, c.data(), n, acc, nullptr,
                      panels);
          for (int64_t i = 0; i < s.m * n; ++i)
            ASSERT_EQ(c[i], want[i]) << "g " << g << " acc " << acc << " i " << i;
        }
      }
    // Panels that cannot serve a call are refused, never misread.
    EXPECT_EQ(packed.panels(0, 1, s.k), nullptr);      // not a panel boundary
    EXPECT_EQ(packed.panels(0, 0, s.k + 1), nullptr);  // another k
    EXPECT_EQ(packed.panels(2, 0, s.k), nullptr);      // no such group
  }
}

TEST(GemmKernel, PackedWeightsGiveTheSameBits) {
  for (SimdTarget level : {SimdTarget::kAvx2, SimdTarget::kAvx512})
    if (simd_supported(level)) check_packed(level);
}

// The expert FFN's inference on packed weights, where each work item runs both GEMMs on a few
// rows through a per-thread scratch (expert_ffn.cc), gives the bits of the saving forward that
// packs per call: with and without GLU and biases, experts of 0, 1, 1000 and 2500 rows (split into
// items) and at 1 to 4 threads (4 threads with few items take the unfused, column-split path).
void check_fused_ffn(SimdTarget level) {
  SimdGuard guard;
  set_simd_target(level);
  const int64_t E = 4, H = 40, F = 72;
  for (const bool glu : {false, true})
    for (const bool bias : {false, true})
      for (const std::vector<int64_t>& rows :
           {std::vector<int64_t>{1000, 0, 1, 2500}, std::vector<int64_t>{3, 90, 0, 0}}) {
        SCOPED_TRACE(testing::Message()
                     << "glu " << glu << " bias " << bias << " rows " << rows[0] << "," << rows[1]);
        std::vector<int64_t> offsets{0};
        for (int64_t r : rows) offsets.push_back(offsets.back() + r);
        const int64_t R = offsets.back(), F1 = glu ? 2 * F : F;
        const Tensor w1 = random_tensor({E, H, F1}, 1), b1 = random_tensor({E, F1}, 2),
                     w2 = random_tensor({E, F, H}, 3), b2 = random_tensor({E, H}, 4),
                     x = random_tensor({R, H}, 5);
        FfnParams p;
        p.E = E, p.H = H, p.F = F, p.glu = glu, p.activation = Activation::kGeluTanh;
        p.w1 = w1.data(), p.w2 = w2.data();
        if (bias) p.b1 = b1.data(), p.b2 = b2.data();
        FfnSaved saved;
        set_num_threads(1);
        Tensor want({R, H});
        ffn_forward(p, offsets.data(), x.data(), want.data(), {}, saved, true);
        PackedWeights p1, p2;
        p1.pack(E, H, F1, w1.data(), H * F1);
        p2.pack(E, F, H, w2.data(), F * H);
        p.w1_packed = &p1, p.w2_packed = &p2;
        for (int threads : {1, 2, 3, 4}) {
          set_num_threads(threads);
          Tensor y({R, H}, std::nanf(""));
          FfnSaved fresh;
          ffn_forward(p, offsets.data(), x.data(), y.data(), {}, fresh, false);
          for (int64_t i = 0; i < R * H; ++i)
            ASSERT_EQ(y[i], want[i]) << threads << " threads, element " << i;
        }
        set_num_threads(0);
      }
}

TEST(ExpertFfn, FusedInferenceOnPackedWeightsGivesTheSavingForwardsBits) {
  for (SimdTarget level : {SimdTarget::kAvx2, SimdTarget::kAvx512})
    if (simd_supported(level)) check_fused_ffn(level);
}

TEST(GemmKernel, PackedWeightsAreRefusedAtAnotherLevelAndAfterClear) {
  if (!simd_supported(SimdTarget::kAvx2)) GTEST_SKIP() << "no AVX2 on this CPU";
  SimdGuard guard;
  set_simd_target(SimdTarget::kAvx2);
  const Tensor w = random_tensor({64 * 48}, 7);
  PackedWeights packed;
  packed.pack(1, 64, 48, w.data(), 0);
  EXPECT_NE(packed.panels(0, 16, 64), nullptr);
  set_simd_target(SimdTarget::kBaseline);  // its panel width would not match: refused
  EXPECT_EQ(packed.panels(0, 0, 64), nullptr);
  set_simd_target(SimdTarget::kAvx2);
  packed.clear();
  EXPECT_TRUE(packed.empty());
  EXPECT_EQ(packed.panels(0, 0, 64), nullptr);
  set_simd_target(SimdTarget::kBaseline);  // the baseline level has no panels to pack
  packed.pack(1, 64, 48, w.data(), 0);
  EXPECT_TRUE(packed.empty());
}

// Weight gradients (weight_grad_gemm): at every native level the same bits as the reference,
// on both sides of the few-rows limit (k 16 and 17 at AVX2, 32 and 33 at AVX-512), for 1-9 rows
// of C (bands of 4 at AVX-512 and 3 at AVX2, and every remainder), columns in blocks of 4 vectors,
// single vectors and a scalar tail, written (aligned rows: the non-temporal stores; unaligned:
// plain ones) or accumulated. Past the last column of each row of C nothing is touched.
void check_weight_grad(SimdTarget level) {
  SimdGuard guard;
  set_simd_target(level);
  uint64_t seed = 300;
  for (int64_t m : {1, 2, 3, 4, 5, 7, 9})
    for (int64_t n : {5, 16, 83, 130, 256})
      for (int64_t k : {1, 2, 16, 17, 32, 33})
        for (int64_t pad : {0, 3})
          for (bool acc : {false, true}) {
            SCOPED_TRACE(testing::Message() << "m=" << m << " n=" << n << " k=" << k << " ldc=n+"
                                            << pad << " acc=" << acc);
            const int64_t ldc = n + pad;
            const Tensor at = random_tensor({k * (m + 2)}, seed++),
                         b = random_tensor({k * (n + 1)}, seed++);
            Tensor c = random_tensor({m * ldc}, seed++), want = c;
            gemm_fma_reference(m, n, k, MatRef::transposed(at.data(), m + 2),
                               MatRef::rows(b.data(), n + 1), want.data(), ldc, acc);
            weight_grad_gemm(m, n, k, at.data(), m + 2, b.data(), n + 1, c.data(), ldc, acc);
            for (int64_t i = 0; i < m * ldc; ++i) ASSERT_EQ(c[i], want[i]) << "element " << i;
          }
}

TEST(GemmKernel, WeightGradientsEqualTheFmaReferenceBitwise) {
  bool ran = false;
  for (SimdTarget level : {SimdTarget::kAvx2, SimdTarget::kAvx512})
    if (simd_supported(level)) check_weight_grad(level), ran = true;
  if (!ran) GTEST_SKIP() << "no AVX2 on this CPU";
}

TEST(GemmKernel, BaselineUsesTheLibraryWithinTolerance) {
  SimdGuard guard;
  set_simd_target(SimdTarget::kBaseline);
  EXPECT_FALSE(kernel_gemm_native());
  const int64_t m = 37, n = 45, k = 300;
  const Tensor a = random_tensor({k * m}, 3), b = random_tensor({k * n}, 4);
  Tensor c({m * n}), want({m * n});
  int64_t covered = 0;
  const GemmEpilogue epi = [&](int64_t, int64_t rows, int64_t, int64_t cols) {
    covered += rows * cols;
  };
  kernel_gemm(m, n, k, MatRef::transposed(a.data(), m), MatRef::rows(b.data(), n), c.data(), n,
              false, &epi);
  gemm_fma_reference(m, n, k, MatRef::transposed(a.data(), m), MatRef::rows(b.data(), n),
                     want.data(), n, false);
  EXPECT_EQ(covered, m * n);
  for (int64_t i = 0; i < m * n; ++i) ASSERT_NEAR(c[i], want[i], 1e-4f) << i;
}

TEST(GemmKernel, EmptyInnerDimensionZeroesOrKeeps) {
  Tensor c({2 * 3}, 5.f);
  kernel_gemm(2, 3, 0, MatRef::rows(nullptr, 0), MatRef::rows(nullptr, 3), c.data(), 3, true);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(c[i], 5.f);
  kernel_gemm(2, 3, 0, MatRef::rows(nullptr, 0), MatRef::rows(nullptr, 3), c.data(), 3, false);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(c[i], 0.f);
}

}  // namespace
}  // namespace sparsemoe
