// The run-time instruction-set choice (ops/simd.h): the FMA levels this CPU supports give bitwise
// the same activations as each other (the baseline x86-64 kernels agree to rounding), the same
// softmax, dropout and layer norm as the baseline, and the same whole MoE layer forward and
// backward in training (dropout on); bad names are errors naming the argument.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "moe_fixtures.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/ops/kernels.h"
#include "sparsemoe/ops/layer_norm.h"
#include "sparsemoe/ops/probe.h"
#include "sparsemoe/ops/simd.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::bitwise_equal;
using test::random_tensor;
using test::small_moe;

// Restores the level in use when a test ends.
struct SimdGuard {
  SimdTarget saved = simd_target();
  ~SimdGuard() { set_simd_target(saved); }
};

using test::supported_levels;

TEST(Simd, ReportsWhatRuns) {
  SimdGuard guard;
  EXPECT_TRUE(simd_supported(SimdTarget::kBaseline));
  EXPECT_TRUE(simd_supported(simd_best_supported()));
  for (SimdTarget t : supported_levels()) {
    sparsemoe::set_simd_target(t);
    EXPECT_EQ(simd_target(), t);
  }
  EXPECT_EQ(simd_target_name(SimdTarget::kAvx2), "avx2 (x86-64-v3)");
  EXPECT_EQ(parse_simd_target("avx512", "SPARSEMOE_SIMD"), SimdTarget::kAvx512);
  EXPECT_EQ(test::error_of([] { parse_simd_target("sse9", "SPARSEMOE_SIMD"); }),
            "SPARSEMOE_SIMD: expected baseline, avx2 or avx512, got 'sse9'");
  if (!simd_supported(SimdTarget::kAvx512)) {
    EXPECT_THROW(set_simd_target(SimdTarget::kAvx512), InvalidArgument);
  }
}

TEST(Simd, ActivationsBitwiseEqualAtEveryFmaLevelAndToRoundingAtBaseline) {
  SimdGuard guard;
  // Odd length (vector tails), values across the clamp of exp and both signs.
  const int64_t n = 1027;
  Tensor h = random_tensor({n}, 3, -12.f, 12.f), da = random_tensor({n}, 4);
  h[0] = 0.f, h[1] = -100.f, h[2] = 100.f, h[3] = -1e-30f;
  for (Activation act : {Activation::kRelu, Activation::kGelu, Activation::kGeluTanh,
                         Activation::kLinear, Activation::kTanh}) {
    // The baseline level multiplies and adds where the FMA levels fuse (kernels.cc: mul_add).
    set_simd_target(SimdTarget::kBaseline);
    Tensor a0({n}), d0({n});
    activation_forward(act, h.data(), a0.data(), n);
    activation_backward(act, h.data(), da.data(), d0.data(), n);
    Tensor a_fma, d_fma;  // the first FMA level's results
    for (SimdTarget t : supported_levels()) {
      sparsemoe::set_simd_target(t);
      Tensor a({n}), d({n});
      activation_forward(act, h.data(), a.data(), n);
      activation_backward(act, h.data(), da.data(), d.data(), n);
      const std::string what = std::string(activation_name(act)) + " " + simd_target_name(t);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(a[i], a0[i], 1e-6f * std::max(1.f, std::fabs(a0[i]))) << what << " " << h[i];
        EXPECT_NEAR(d[i], d0[i], 1e-6f * std::max(1.f, std::fabs(d0[i]))) << what << " " << h[i];
      }
      if (t == SimdTarget::kBaseline) continue;
      if (a_fma.numel() == 0) {
        a_fma = a, d_fma = d;
        continue;
      }
      EXPECT_TRUE(bitwise_equal(a, a_fma)) << what;
      EXPECT_TRUE(bitwise_equal(d, d_fma)) << what;
    }
  }
}

// Attention's softmax: the same bits at every level, for row lengths with and without a vector
// tail, with a mask (and a fully masked row) and a leading dimension wider than the rows; and
// within rounding of the libm reference softmax_rows.
TEST(Simd, ScaledSoftmaxBitwiseEqualAtEveryLevelAndNearTheReference) {
  SimdGuard guard;
  const float scale = 0.125f, masked = -1e9f;
  for (int64_t n : {1, 15, 16, 37, 512}) {
    const int64_t rows = 5, ld = n + 3;
    const Tensor x = random_tensor({rows * ld}, 5, -60.f, 60.f);
    Tensor mask = random_tensor({rows * ld}, 6, 0.f, 1.f);
    for (int64_t i = 0; i < rows * ld; ++i) mask[i] = mask[i] < 0.3f ? 0.f : 1.f;
    for (int64_t j = 0; j < n; ++j) mask[2 * ld + j] = 0.f;  // a fully masked row
    for (const Tensor* m : std::vector<const Tensor*>{nullptr, &mask}) {
      Tensor want = x;  // the reference: scale, mask, libm softmax
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          float& v = want[r * ld + j];
          v = m && (*m)[r * ld + j] == 0.f ? masked : scale * v;
        }
        softmax_rows(want.data() + r * ld, 1, n);
      }
      set_simd_target(SimdTarget::kBaseline);
      Tensor y0 = x;
      softmax_rows_scaled(y0.data(), rows, n, ld, scale, m ? m->data() : nullptr, ld, masked);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j)
          EXPECT_NEAR(y0[r * ld + j], want[r * ld + j], 2e-6f + 1e-5f * want[r * ld + j])
              << "n=" << n << " row " << r << " col " << j;
      for (SimdTarget t : supported_levels()) {
        sparsemoe::set_simd_target(t);
        Tensor y = x;
        softmax_rows_scaled(y.data(), rows, n, ld, scale, m ? m->data() : nullptr, ld, masked);
        EXPECT_TRUE(bitwise_equal(y, y0)) << "n=" << n << " " << simd_target_name(t);
      }
    }
  }
}

// Attention's dropout and softmax backward: dropout_span is dropout_keep's rule exactly, and both
// give the same bits at every level.
TEST(Simd, DropoutSpanAndSoftmaxBackwardBitwiseEqualAtEveryLevel) {
  SimdGuard guard;
  const int64_t n = 301;
  const Tensor in = random_tensor({n}, 7), dpd = random_tensor({n}, 8);
  Tensor p = random_tensor({n}, 9, 0.f, 1.f), mask({n}, 1.f);
  for (int64_t j = 0; j < n; j += 7) mask[j] = 0.f;
  const uint64_t key = 1234, index0 = (uint64_t{1} << 33) + 5;
  const float rate = 0.3f;
  Tensor want({n});
  for (int64_t i = 0; i < n; ++i)
    want[i] = dropout_keep(key, index0 + static_cast<uint64_t>(i), rate)
                  ? in[i] * dropout_scale(rate)
                  : 0.f;
  set_simd_target(SimdTarget::kBaseline);
  Tensor pd({n}), ds0 = dpd;
  dropout_span(key, index0, rate, p.data(), pd.data(), n);
  softmax_backward_row(p.data(), pd.data(), ds0.data(), n, 0.5f, mask.data());
  for (SimdTarget t : supported_levels()) {
    sparsemoe::set_simd_target(t);
    Tensor out({n}), ds = dpd;
    dropout_span(key, index0, rate, in.data(), out.data(), n);
    EXPECT_TRUE(bitwise_equal(out, want)) << simd_target_name(t);
    softmax_backward_row(p.data(), pd.data(), ds.data(), n, 0.5f, mask.data());
    EXPECT_TRUE(bitwise_equal(ds, ds0)) << simd_target_name(t);
  }
  for (int64_t j = 0; j < n; j += 7) EXPECT_EQ(ds0[j], 0.f);
}

// The cross-entropy row: logsumexp and the scaled softmax, the same bits at every level and within
// rounding of the libm logsumexp.
TEST(Simd, LogsumexpAndSoftmaxBitwiseEqualAtEveryLevel) {
  SimdGuard guard;
  for (int64_t n : {1, 17, 2000}) {
    const Tensor z = random_tensor({n}, 11, -30.f, 30.f);
    set_simd_target(SimdTarget::kBaseline);
    Tensor d0({n});
    const float lse0 = logsumexp_and_softmax(z.data(), n, 0.25f, d0.data());
    EXPECT_NEAR(lse0, logsumexp(z.data(), n), 1e-5f * std::max(1.f, std::abs(lse0))) << n;
    double total = 0;
    for (int64_t j = 0; j < n; ++j) total += d0[j];
    EXPECT_NEAR(total, 0.25, 1e-6) << n;
    for (SimdTarget t : supported_levels()) {
      sparsemoe::set_simd_target(t);
      Tensor d({n});
      EXPECT_EQ(logsumexp_and_softmax(z.data(), n, 0.25f, d.data()), lse0) << simd_target_name(t);
      EXPECT_TRUE(bitwise_equal(d, d0)) << "n=" << n << " " << simd_target_name(t);
    }
  }
}

// The AdamW update: at every level the bits of a plain scalar loop over the same expression (and
// lengths with and without a vector tail), moments and weights alike.
TEST(Simd, AdamWUpdateBitwiseEqualAtEveryLevel) {
  SimdGuard guard;
  const AdamWScalars s{0.5f, 0.9f, 0.1f, 0.999f, 0.001f, 0.9999f, 1e-3f, 10.f, 1e-6f};
  for (int64_t n : {1, 23, 1000}) {
    const Tensor g = random_tensor({n}, 21, -2.f, 2.f), w0 = random_tensor({n}, 22),
                 m0 = random_tensor({n}, 23, -0.1f, 0.1f), v0 = random_tensor({n}, 24, 0.f, 0.1f);
    Tensor w = w0, m = m0, v = v0;
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i] * s.clip;
      m[i] = s.beta1 * m[i] + s.one_minus_beta1 * gi;
      v[i] = s.beta2 * v[i] + s.one_minus_beta2 * gi * gi;
      w[i] = w[i] * s.keep - s.step_size * m[i] / (std::sqrt(v[i] * s.inv_c2) + s.eps);
    }
    for (SimdTarget t : supported_levels()) {
      set_simd_target(t);
      Tensor wt = w0, mt = m0, vt = v0;
      adamw_update(wt.data(), g.data(), mt.data(), vt.data(), n, s);
      EXPECT_TRUE(bitwise_equal(wt, w) && bitwise_equal(mt, m) && bitwise_equal(vt, v))
          << "n=" << n << " " << simd_target_name(t);
    }
  }
}

// Layer norm forward and backward: the same bits at every level (widths with and without a tail).
TEST(Simd, LayerNormBitwiseEqualAtEveryLevel) {
  SimdGuard guard;
  for (int64_t H : {5, 64, 77}) {
    const int64_t N = 9;
    const Tensor x = random_tensor({N * H}, 12, -3.f, 5.f), dy = random_tensor({N * H}, 13);
    const Tensor gamma = random_tensor({H}, 14), beta = random_tensor({H}, 15);
    auto run = [&](SimdTarget t) {
      sparsemoe::set_simd_target(t);
      std::vector<Tensor> out{Tensor({N * H}), Tensor({N * H}), Tensor({N}),
                              Tensor({N * H}), Tensor({H}),     Tensor({H})};
      layer_norm_forward(x.data(), N, H, gamma.data(), beta.data(), 1e-12, out[0].data(),
                         out[1].data(), out[2].data());
      layer_norm_backward(dy.data(), out[1].data(), out[2].data(), gamma.data(), N, H,
                          out[3].data(), out[4].data(), out[5].data());
      return out;
    };
    const auto want = run(SimdTarget::kBaseline);
    for (SimdTarget t : supported_levels()) {
      const auto got = run(t);
      for (size_t i = 0; i < got.size(); ++i)
        EXPECT_TRUE(bitwise_equal(got[i], want[i]))
            << "H=" << H << " output " << i << " " << simd_target_name(t);
    }
  }
}

// The FMA levels share one GEMM kernel contract (ops/gemm_kernel.h), so AVX2 and AVX-512 give the
// same bits; the baseline level (no FMA) uses the BLAS library and agrees to rounding.
TEST(Simd, MoeLayerBitwiseEqualAtEveryFmaLevel) {
  SimdGuard guard;
  MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 4, 2, 1.5, 16, 40);
  c.experts.inner_dropout = 0.1;
  c.experts.activation = "gelu_tanh";
  const Tensor x = random_tensor({2, 6, 16}, 8), dy = random_tensor({2, 6, 16}, 9);
  ForwardOptions opt;
  opt.training = true;
  opt.step = 3;
  auto run = [&](SimdTarget t, Tensor& y, Tensor& dx, std::vector<Tensor>& grads) {
    sparsemoe::set_simd_target(t);
    MoeLayer moe(c);
    moe.forward(x, y, opt);
    moe.backward(dy, dx);
    for (const ParamRef& p : moe.params()) grads.push_back(*p.grad);
  };
  Tensor y0, dx0;
  std::vector<Tensor> g0;
  run(SimdTarget::kBaseline, y0, dx0, g0);
  Tensor y1, dx1;
  std::vector<Tensor> g1;
  for (SimdTarget t : supported_levels()) {
    if (t == SimdTarget::kBaseline) continue;
    Tensor y, dx;
    std::vector<Tensor> g;
    run(t, y, dx, g);
    ASSERT_EQ(g.size(), g0.size());
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_NEAR(y[i], y0[i], 1e-5f);
    for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_NEAR(dx[i], dx0[i], 1e-5f);
    if (y1.numel() == 0) {  // the first FMA level: the others must equal it bitwise
      y1 = y, dx1 = dx, g1 = g;
      continue;
    }
    EXPECT_TRUE(bitwise_equal(y, y1)) << simd_target_name(t);
    EXPECT_TRUE(bitwise_equal(dx, dx1)) << simd_target_name(t);
    for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(bitwise_equal(g[i], g1[i])) << i;
  }
}

}  // namespace
}  // namespace sparsemoe

// The machine probes measure something plausible at every level the CPU has (their figures
// themselves are not asserted: timings never are).
TEST(Probe, FmaPeakAndReadBandwidthArePositiveAndFinite) {
  using sparsemoe::SimdTarget;
  const SimdTarget saved = sparsemoe::simd_target();
  for (SimdTarget t : {SimdTarget::kBaseline, SimdTarget::kAvx2, SimdTarget::kAvx512}) {
    if (!sparsemoe::simd_supported(t)) continue;
    sparsemoe::set_simd_target(t);
    const double g = sparsemoe::fma_peak_gflops(1);
    EXPECT_TRUE(std::isfinite(g) && g > 0) << sparsemoe::simd_target_name(t) << ": " << g;
  }
  sparsemoe::set_simd_target(saved);
  const double bw = sparsemoe::read_bandwidth_gbps(1);
  EXPECT_TRUE(std::isfinite(bw) && bw > 0) << bw;
}
