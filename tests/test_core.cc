// Core: tensor, shape errors, GEMM against the reference, activations, softmax, dropout,
// parallel_for, capacity rounding, strict JSON configs.
#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/ops/kernels.h"
#include "sparsemoe/ops/simd.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::normalized_error;
using test::random_tensor;

TEST(Tensor, AlignedReusedAndChecked) {
  Tensor t({3, 5}, 2.f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t[14], 2.f);
  const float* before = t.data();
  t.resize({5, 3});
  EXPECT_EQ(t.data(), before);  // no reallocation when capacity suffices
  t.resize({4, 1});
  t.resize({5, 3});
  EXPECT_EQ(t.data(), before);
  EXPECT_THROW(Tensor({2, 2}, std::vector<float>{1, 2, 3}), InvalidArgument);
  try {
    check_shape("x", {2, 8, 15}, {2, 8, 16}, "[B, L, H]");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "argument 'x': expected shape [2, 8, 16] [B, L, H], got [2, 8, 15]");
  }
}

TEST(Tensor, CopiesOfEmptyTensorsStayEmpty) {
  // A default tensor has no storage; copying it (or a zero-size one) over a full one must not
  // read through the null pointer.
  const Tensor none, zero({0, 4});
  Tensor t({2, 2}, 1.f);
  t = none;
  EXPECT_EQ(t.numel(), 0);
  t = zero;
  EXPECT_EQ(t.shape(), (Shape{0, 4}));
  EXPECT_EQ(t.numel(), 0);
  const Tensor copy(none);
  EXPECT_EQ(copy.numel(), 0);
  t = Tensor({3}, 2.f);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{2, 2, 2}));
}

TEST(Tensor, BorrowedMemoryIsUsedInPlaceAndNeverFreed) {
  // The Python bindings wrap numpy arrays this way: writes land in the caller's memory, a resize
  // within it keeps it, a larger one moves to owned storage, and destruction frees nothing of the
  // caller's (ASan would report a free of a stack array).
  float buf[6] = {1, 2, 3, 4, 5, 6};
  {
    Tensor t = Tensor::borrow(buf, {2, 3});
    EXPECT_TRUE(t.borrowed());
    EXPECT_EQ(t.data(), buf);
    t[4] = 50;
    t.resize({3, 2});
    EXPECT_EQ(t.data(), buf);
    const Tensor copy = t;  // a copy owns its storage
    EXPECT_FALSE(copy.borrowed());
    EXPECT_NE(copy.data(), buf);
    EXPECT_EQ(copy.to_vector(), (std::vector<float>{1, 2, 3, 4, 50, 6}));
    t.resize({4, 2});
    EXPECT_FALSE(t.borrowed());
    EXPECT_NE(t.data(), buf);
  }
  EXPECT_EQ(buf[4], 50);
  Tensor moved = Tensor::borrow(buf, {6});
  Tensor other = std::move(moved);
  EXPECT_TRUE(other.borrowed());
  EXPECT_THROW(Tensor::borrow(nullptr, {2}), InvalidArgument);
  EXPECT_FALSE(Tensor::borrow(nullptr, {0}).borrowed());
}

TEST(Gemm, MatchesReferenceForAllTransposes) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int64_t m = 37, n = 53, k = 29;
      Tensor a = random_tensor(ta ? Shape{k, m} : Shape{m, k}, 1);
      Tensor b = random_tensor(tb ? Shape{n, k} : Shape{k, n}, 2);
      Tensor c = random_tensor({m, n}, 3), ref = c;
      gemm(ta, tb, m, n, k, 0.5f, a.data(), ta ? m : k, b.data(), tb ? k : n, 0.25f, c.data(), n);
      gemm_reference(ta, tb, m, n, k, 0.5f, a.data(), ta ? m : k, b.data(), tb ? k : n, 0.25f,
                     ref.data(), n);
      EXPECT_LT(normalized_error(c, ref), 1e-5) << ta << tb;
    }
  Tensor a = random_tensor({300, 70}, 4), b = random_tensor({70, 600}, 5), c({300, 600}),
         ref({300, 600});
  matmul(300, 600, 70, a.data(), b.data(), c.data());
  gemm_reference(false, false, 300, 600, 70, 1.f, a.data(), 70, b.data(), 600, 0.f, ref.data(),
                 600);
  EXPECT_LT(normalized_error(c, ref), 1e-5);
}

TEST(Kernels, FastActivationsMatchLibraryMath) {
  const int64_t n = 4001;
  Tensor h({n}), a({n}), da({n}, 1.f), dh({n});
  for (int64_t i = 0; i < n; ++i) h[i] = -12.f + 24.f * i / (n - 1);
  const SimdTarget saved = simd_target();
  for (SimdTarget level : test::supported_levels()) {
    set_simd_target(level);
    for (Activation act : {Activation::kRelu, Activation::kGelu, Activation::kGeluTanh,
                           Activation::kLinear, Activation::kTanh}) {
      activation_forward(act, h.data(), a.data(), n);
      activation_backward(act, h.data(), da.data(), dh.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const float x = h[i];
        EXPECT_NEAR(a[i], activate(act, x), 2e-6 * std::max(1.f, std::fabs(x)))
            << activation_name(act) << " " << simd_target_name(level) << " x=" << x;
        EXPECT_NEAR(dh[i], activate_grad(act, x), 3e-6)
            << activation_name(act) << " " << simd_target_name(level) << " x=" << x;
      }
    }
  }
  set_simd_target(saved);
  EXPECT_THROW(parse_activation("swish"), ConfigError);
}

// In place (the kernel on one array): the same bits as activation_forward, at every level.
TEST(Kernels, ActivationInPlaceHasTheSameBits) {
  const int64_t n = 1000;
  Tensor h({n}), a({n});
  for (int64_t i = 0; i < n; ++i) h[i] = -6.f + 12.f * static_cast<float>((i * 37) % n) / n;
  const SimdTarget saved = simd_target();
  for (SimdTarget level : test::supported_levels()) {
    set_simd_target(level);
    for (Activation act : {Activation::kRelu, Activation::kGelu, Activation::kGeluTanh,
                           Activation::kLinear, Activation::kTanh}) {
      activation_forward(act, h.data(), a.data(), n);
      Tensor x = h;
      activation_in_place(act, x.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(x[i], a[i]) << activation_name(act) << " " << simd_target_name(level) << " " << i;
    }
  }
  set_simd_target(saved);
}

TEST(Kernels, ActivationGradientsMatchFiniteDifferences) {
  for (Activation act : {Activation::kGelu, Activation::kGeluTanh, Activation::kTanh}) {
    for (double x = -4; x <= 4; x += 0.37) {
      const double eps = 1e-3;
      const double fd = (activate(act, static_cast<float>(x + eps)) -
                         activate(act, static_cast<float>(x - eps))) /
                        (2 * eps);
      EXPECT_NEAR(activate_grad(act, static_cast<float>(x)), fd, 2e-3) << x;
    }
  }
}

TEST(Kernels, SoftmaxAndLogsumexp) {
  Tensor x({3, 4}, std::vector<float>{1, 2, 3, 4, 0, 0, 0, 0, 100, 0, -100, 1});
  Tensor orig = x;
  softmax_rows(x.data(), 3, 4);
  for (int r = 0; r < 3; ++r) {
    double s = 0;
    for (int i = 0; i < 4; ++i) s += x[r * 4 + i];
    EXPECT_NEAR(s, 1.0, 1e-6);
    const float lse = logsumexp(orig.data() + r * 4, 4);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(x[r * 4 + i], std::exp(orig[r * 4 + i] - lse), 1e-6);
  }
  EXPECT_NEAR(x[4], 0.25f, 1e-7);
}

TEST(Kernels, DropoutIsCounterBasedWithTheRightRate) {
  int kept = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) kept += dropout_keep(42, i, 0.3f);
  EXPECT_NEAR(kept / static_cast<double>(n), 0.7, 0.005);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(dropout_keep(42, i, 0.5f), dropout_keep(42, i, 0.5f));
  int differ = 0;
  for (int i = 0; i < 1000; ++i) differ += dropout_keep(42, i, 0.5f) != dropout_keep(43, i, 0.5f);
  EXPECT_GT(differ, 350);
  EXPECT_TRUE(dropout_keep(1, 1, 0.f));
  EXPECT_FLOAT_EQ(dropout_scale(0.2f), 1.25f);
}

TEST(Parallel, RunsEveryItemOnceAndPropagatesErrors) {
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::vector<int> hits(1000, 0);
    parallel_for(1000, [&](int64_t i) { hits[i]++; });
    for (int h : hits) EXPECT_EQ(h, 1);
    std::vector<int> range_hits(1001, 0);
    parallel_for_range(1001, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) range_hits[i]++;
    });
    for (int h : range_hits) EXPECT_EQ(h, 1);
    EXPECT_THROW(parallel_for(10,
                              [](int64_t i) {
                                if (i == 7) throw InvalidArgument("boom");
                              }),
                 InvalidArgument);
  }
  set_num_threads(0);
}

TEST(Capacity, RoundHalfEvenLikePython) {
  EXPECT_EQ(round_half_even(2.5), 2);
  EXPECT_EQ(round_half_even(3.5), 4);
  EXPECT_EQ(round_half_even(0.5), 0);
  EXPECT_EQ(round_half_even(1.25), 1);
  EXPECT_EQ(round_half_even(1.5), 2);
  EXPECT_EQ(expert_capacity(1.0, 10, 4), 2);
  EXPECT_EQ(expert_capacity(0.5, 4, 4), 0);
  EXPECT_EQ(expert_capacity(0.5, 4, 4, 4), 4);
  EXPECT_THROW(expert_capacity(-1.0, 4, 4), InvalidArgument);
}

TEST(Capacity, GroupingRulesAndErrors) {
  const Grouping g = compute_grouping(4, 10, 2.0);  // TFM-SHAPE1: T = 20, G = 2
  EXPECT_EQ(g.tokens_per_group, 20);
  EXPECT_EQ(g.num_groups, 2);
  const Grouping half = compute_grouping(2, 8, 0.5);  // one example in two groups
  EXPECT_EQ(half.tokens_per_group, 4);
  EXPECT_EQ(half.num_groups, 4);
  EXPECT_THROW(compute_grouping(2, 8, 3.0), InvalidArgument);   // > B
  EXPECT_THROW(compute_grouping(3, 8, 2.0), InvalidArgument);   // 16 does not divide 24
  EXPECT_THROW(compute_grouping(2, 8, 0.0), InvalidArgument);   // <= 0
  EXPECT_THROW(compute_grouping(2, 8, 0.05), InvalidArgument);  // < 1 token per group
  try {
    compute_grouping(2, 8, 3.0);
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("examples_per_group"), std::string::npos);
  }
}

TEST(ConfigIo, UnknownKeysAndWrongTypesNameTheKey) {
  nlohmann::json j = {{"a", 1}, {"typo", 2}};
  int a = 0;
  JsonFields f(j, "Thing");
  f.read("a", a);
  EXPECT_EQ(a, 1);
  try {
    f.finish();
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "Thing: unknown key 'typo'");
  }
  nlohmann::json bad = {{"a", "one"}};
  JsonFields g(bad, "Thing");
  EXPECT_THROW(g.read("a", a), ConfigError);
  EXPECT_THROW(JsonFields(nlohmann::json::array(), "Thing"), ConfigError);
}

}  // namespace
}  // namespace sparsemoe
