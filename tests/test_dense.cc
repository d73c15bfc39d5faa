// Dense: against a plain-loop reference and the shape error; the column tiling's rule, and bits
// that do not depend on it. Gradients for each activation with
// and without bias: the harness's nn/dense cases.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <vector>

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

// With packed weights, the largest row tiles are halved first (down to min_rows), in row order.
TEST(TiledGemm, RowSplitsBeforeColumnsWithPackedWeights) {
  const int64_t one[2] = {0, 2048};
  auto tiles = split_rows(row_tiles(one, 1), 2);  // 4 tiles of 512 -> 8 of 256
  ASSERT_EQ(tiles.size(), 8u);
  for (size_t i = 0; i < tiles.size(); ++i) {
    EXPECT_EQ(tiles[i].begin, static_cast<int64_t>(i) * 256);
    EXPECT_EQ(tiles[i].end, static_cast<int64_t>(i + 1) * 256);
  }
  EXPECT_EQ(split_rows(row_tiles(one, 1), 1).size(), 4u);  // one thread: as they are
  const int64_t small[2] = {0, 200};
  EXPECT_EQ(split_rows(row_tiles(small, 1), 2).size(), 1u);  // halves would be under 128 rows
  // Unequal groups (experts): the largest is split, each half stays in its group.
  const int64_t experts[4] = {0, 100, 700, 730};
  tiles = split_rows(row_tiles(experts, 3), 2);
  std::vector<std::array<int64_t, 3>> got;
  for (const auto& t : tiles) got.push_back({t.group, t.begin, t.end});
  const std::vector<std::array<int64_t, 3>> want = {{0, 0, 100},   {1, 100, 228}, {1, 228, 356},
                                                    {1, 356, 484}, {1, 484, 612}, {1, 612, 700},
                                                    {2, 700, 730}};
  EXPECT_EQ(got, want);
}

// Without packed weights, rows are split only when there are fewer items than threads, into as
// many tiles as threads while the halves keep kMinSplitRows rows.
TEST(TiledGemm, FewItemsSplitRowsToOccupyTheThreads) {
  const int64_t masked[2] = {0, 160};
  auto tiles = split_rows(row_tiles(masked, 1), 2, kMinSplitRows, 1);
  ASSERT_EQ(tiles.size(), 2u);
  EXPECT_EQ(tiles[0].end, 80);
  EXPECT_EQ(tiles[1].begin, 80);
  EXPECT_EQ(split_rows(row_tiles(masked, 1), 4, kMinSplitRows, 1).size(), 4u);  // 40 each
  EXPECT_EQ(split_rows(row_tiles(masked, 1), 8, kMinSplitRows, 1).size(), 4u);  // not under 32
  const int64_t few[2] = {0, 50};
  EXPECT_EQ(split_rows(row_tiles(few, 1), 2, kMinSplitRows, 1).size(), 1u);
}

// Weight and bias gradients written (accumulate = false) over buffers of NaN: the same bits as
// zeroing them and accumulating, for groups of 3, 0 (zeros written), 40 (past the few-rows path)
// and 1 rows, at one and two threads.
TEST(TiledGemm, WrittenGradientsEqualZeroedAndAccumulated) {
  const int64_t offsets[5] = {0, 3, 3, 43, 44}, K = 70, N = 100, groups = 4;
  const Tensor a = random_tensor({44, K}, 1), b = random_tensor({44, N}, 2);
  for (int threads : {1, 2}) {
    SCOPED_TRACE(testing::Message() << threads << " threads");
    set_num_threads(threads);
    Tensor dw({groups, K, N}), want({groups, K, N}), db({groups, N}), want_b({groups, N});
    dw.fill(NAN), db.fill(NAN);
    add_weight_grad(offsets, groups, a.data(), K, b.data(), N, want.data());
    add_weight_grad(offsets, groups, a.data(), K, b.data(), N, dw.data(), false);
    add_bias_grad(offsets, groups, b.data(), N, want_b.data());
    add_bias_grad(offsets, groups, b.data(), N, db.data(), false);
    EXPECT_TRUE(test::bitwise_equal(dw, want));
    EXPECT_TRUE(test::bitwise_equal(db, want_b));
    // ... and accumulating onto them adds the same again.
    add_weight_grad(offsets, groups, a.data(), K, b.data(), N, want.data());
    add_weight_grad(offsets, groups, a.data(), K, b.data(), N, dw.data());
    EXPECT_TRUE(test::bitwise_equal(dw, want));
  }
  set_num_threads(0);
}

// Packed (inference) weights split rows, not columns: same bits as the training forward at any
// thread count, with row counts that split into halves of unequal sizes.
TEST(TiledGemm, PackedDenseBitsDoNotDependOnTheRowSplit) {
  Dense d(96, 1000, Activation::kGelu, true, 0.5, 4);
  d.bias = random_tensor({1000}, 5);
  for (const int64_t rows : {int64_t{24}, int64_t{300}, int64_t{1100}}) {
    const Tensor x = random_tensor({rows, 96}, 6);
    set_num_threads(1);
    Tensor ref;
    d.forward(x, ref, false);
    d.prepare_inference();
    for (int threads : {1, 2, 3, 4}) {
      set_num_threads(threads);
      Tensor y;
      d.forward(x, y, false);
      EXPECT_TRUE(test::bitwise_equal(ref, y)) << "rows " << rows << ", " << threads << " threads";
    }
    d.release_inference();
    set_num_threads(0);
  }
}

// A Dense layer's forward and backward (y, dx, kernel and bias gradients) at 1 thread against 2,
// 3 and 4: the tiles change with the thread count, the bits must not.
void expect_dense_bits_independent_of_threads(int64_t in, int64_t out, int64_t rows,
                                              Activation act) {
  auto run = [&](int threads) {
    set_num_threads(threads);
    Dense d(in, out, act, true, 0.5, 4);
    d.bias = random_tensor({out}, 5);
    const Tensor x = random_tensor({rows, in}, 6), dy = random_tensor({rows, out}, 7);
    // NaN where nothing writes: a row a split left out cannot pass for a value that an earlier
    // run's freed buffer happened to hold.
    Tensor y({rows, out}, std::nanf("")), dx({rows, in}, std::nanf(""));
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
          << in << " x " << out << ", rows " << rows << ", tensor " << i << ": 1 vs " << threads
          << " threads";
  }
}

// The column split: few rows (the kernel reads the weights in place) and two row tiles, and an
// output width that is not a multiple of the 32-column panels.
TEST(TiledGemm, DenseBitsDoNotDependOnTheColumnSplit) {
  for (const int64_t rows : {int64_t{24}, int64_t{700}})
    expect_dense_bits_independent_of_threads(96, 1000, rows, Activation::kGelu);
}

// A narrow layer (H 64, as the main job's) has too few tiles for the threads: the weight gradient
// is split by its rows and dX by the token rows.
TEST(TiledGemm, NarrowLayerBitsDoNotDependOnTheSplit) {
  for (const int64_t in : {int64_t{64}, int64_t{128}})
    for (const int64_t rows : {int64_t{160}, int64_t{1024}})
      expect_dense_bits_independent_of_threads(in, 64, rows, Activation::kLinear);
}

}  // namespace
}  // namespace sparsemoe
