// Dense: against a plain-loop reference and the shape error; the column tiling's rule, and bits
// that do not depend on it. Gradients for each activation with
// and without bias: the harness's nn/dense cases.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/nn/dense.h"
#include "sparsemoe/ops/tiled_gemm.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

TEST(Dense, MatchesPlainLoops) {
  Dense d(5, 3, Activation::kTanh, true, 0.5, 1);
  d.bias = random_tensor({3}, 2);
  const Tensor x = random_tensor({2, 130, 5}, 3);  // more than one row tile
  Tensor y;
  d.forward(x, y);
  ASSERT_EQ(y.shape(), (Shape{2, 130, 3}));
  for (int64_t n = 0; n < 260; ++n)
    for (int64_t j = 0; j < 3; ++j) {
      double acc = d.bias[j];
      for (int64_t i = 0; i < 5; ++i) acc += x[n * 5 + i] * d.kernel[i * 3 + j];
      EXPECT_NEAR(y[n * 3 + j], std::tanh(acc), 1e-5);
    }
  EXPECT_THROW(d.forward(Tensor({2, 4}), y), InvalidArgument);
}

// save = false (inference): the same bits written straight into y, and no backward after it.
TEST(Dense, ForwardWithoutSavingGivesTheSameBits) {
  for (Activation act : {Activation::kLinear, Activation::kGelu})
    for (bool bias : {false, true}) {
      Dense d(40, 70, act, bias, 0.5, 3);
      if (bias) d.bias = random_tensor({70}, 4);
      const Tensor x = random_tensor({3, 50, 40}, 5);
      Tensor y1, y2, dx;
      d.forward(x, y1);
      d.forward(x, y2, false);
      ASSERT_EQ(y1.shape(), y2.shape());
      EXPECT_TRUE(test::bitwise_equal(y1, y2)) << activation_name(act) << " bias " << bias;
      EXPECT_THROW(d.backward(random_tensor({3, 50, 70}, 6), &dx), InvalidArgument);
      d.forward(x, y1);
      d.backward(random_tensor({3, 50, 70}, 6), &dx);
      EXPECT_EQ(dx.shape(), x.shape());
    }
}

// Column tiles: none at one thread, up to four items per thread, never narrower than min_width.
TEST(TiledGemm, ColumnSplitsFollowTheThreads) {
  EXPECT_EQ(col_splits(1, 768, 1), 1);
  EXPECT_EQ(col_splits(1, 4096, 1), 1);
  EXPECT_EQ(col_splits(4, 768, 2), 2);    // 4 row tiles x 2 = 8 items for 2 threads
  EXPECT_EQ(col_splits(16, 2048, 2), 1);  // 16 experts: enough items already
  EXPECT_EQ(col_splits(1, 768, 2), 4);    // 8 would leave 96 columns, under 128
  EXPECT_EQ(col_splits(1, 768, 2, 64), 8);
  EXPECT_EQ(col_splits(3, 4096, 4), 8);
  EXPECT_EQ(col_width(1000, 4), 256);  // tiles start on 32-column panels
  EXPECT_EQ(col_width(1000, 1), 1024);
}

// The column split changes with the thread count, the bits must not: forward and backward at 1,
// 2, 3 and 4 threads, with few rows (the kernel reads the weights in place) and with two row tiles,
// and an output width that is not a multiple of the 32-column panels.
TEST(TiledGemm, DenseBitsDoNotDependOnTheColumnSplit) {
  for (const int64_t rows : {int64_t{24}, int64_t{700}}) {
    auto run = [&](int threads) {
      set_num_threads(threads);
      Dense d(96, 1000, Activation::kGelu, true, 0.5, 4);
      d.bias = random_tensor({1000}, 5);
      const Tensor x = random_tensor({rows, 96}, 6), dy = random_tensor({rows, 1000}, 7);
      Tensor y, dx;
      d.forward(x, y);
      d.backward(dy, &dx);
      set_num_threads(0);
      return std::vector<Tensor>{y, dx, d.kernel_grad, d.bias_grad};
    };
    const auto one = run(1);
    for (int threads : {2, 3, 4}) {
      const auto other = run(threads);
      for (size_t i = 0; i < one.size(); ++i)
        EXPECT_TRUE(test::bitwise_equal(one[i], other[i]))
            << "rows " << rows << ", tensor " << i << ": 1 vs " << threads << " threads";
    }
  }
}

}  // namespace
}  // namespace sparsemoe
