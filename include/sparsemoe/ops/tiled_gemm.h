// The parallel layer over kernel_gemm (ops/gemm_kernel.h) shared by the expert FFN, the dense
// layers and the heads: work split into tiles (row tiles of 512 within each group of rows; when
// there are too few to occupy the threads, rows halved first if the weights are packed, else
// columns split, then rows if the items are still fewer than the threads), each tile one
// single-threaded kernel call whose every output element is one FMA chain over k, so results are
// bitwise identical for any thread count.
// Groups are experts (rows [offsets[g], offsets[g+1]) use expert g's weights); a dense layer is
// one group.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "sparsemoe/core/parallel.h"
#include "sparsemoe/ops/gemm_kernel.h"

namespace sparsemoe {

struct RowTile {
  int64_t group, begin, end;  // rows [begin, end) of group `group`
};

// 512 rows: one A block of the GEMM kernel, so each weight panel is packed once per tile.
inline constexpr int64_t kRowTile = 512;

std::vector<RowTile> row_tiles(const int64_t* offsets, int64_t groups);

// Number of column tiles for `cols` columns given `row_items` row tiles and `threads` threads:
// halved until there are 4 items per thread (none at one thread) or a tile would be narrower than
// min_width. 128 for activations: a GEMM of a few rows runs four 32-column panels at a time (the
// kernel's few-row path). Each column tile packs its rows of A again, so tiles are split no more
// than the threads need. The split may depend on the thread count because it never splits k:
// every element is one FMA chain over k whatever the tiles, so the bits do not change.
int64_t col_splits(int64_t row_items, int64_t cols, int64_t threads, int64_t min_width = 128);
// Columns per tile: a multiple of 32, so that every tile starts on a packed weight panel (the
// last tile may be narrower, or empty).
int64_t col_width(int64_t cols, int64_t splits);

// With B packed beforehand (inference weights), splitting a row tile packs nothing more, while a
// column split packs (transposes) the tile's A once per column tile: so the largest row tiles are
// halved first, while both halves keep min_rows rows, until there are four items per thread, and
// columns are split only after that. Without packed weights a row split would pack B once more
// per half, so columns are split as before. Row splits never change a bit either (rows are
// independent). Tiles stay in row order.
std::vector<RowTile> split_rows(std::vector<RowTile> tiles, int64_t threads, int64_t min_rows = 128,
                                int64_t items_per_thread = 4);

// Rows of a tile below which for_tiles does not split it to occupy idle threads.
inline constexpr int64_t kMinSplitRows = 32;

// Runs fn(tile, c0, c1) over every (row tile, column tile) pair, in parallel. b_packed: every
// call's B operand was packed beforehand (see split_rows).
// Without packed weights, tiles are split by rows only when the items would still be fewer than
// the threads (a narrow layer's few rows, as the MLM head's dX over the masked tokens at H 64:
// one GEMM on one thread while the others waited); each half packs B again.
template <class Fn>
void for_tiles(const std::vector<RowTile>& row_tiles, int64_t cols, bool b_packed, Fn&& fn) {
  const int64_t threads = num_threads();
  std::vector<RowTile> split;  // only when rows are split: the caller's tiles are not copied
  if (b_packed) split = split_rows(row_tiles, threads);
  const std::vector<RowTile>* tiles = b_packed ? &split : &row_tiles;
  int64_t n = static_cast<int64_t>(tiles->size());
  int64_t splits = col_splits(n, cols, threads);
  if (n * splits < threads) {
    split = split_rows(*tiles, threads, kMinSplitRows, 1);
    tiles = &split;
    n = static_cast<int64_t>(split.size());
    splits = col_splits(n, cols, threads);
  }
  const int64_t width = col_width(cols, splits);
  parallel_for(n * splits, [&](int64_t item) {
    const int64_t c0 = (item % splits) * width, c1 = std::min(cols, c0 + width);
    if (c0 < c1) fn((*tiles)[item / splits], c0, c1);
  });
}
template <class Fn>
void for_tiles(const std::vector<RowTile>& row_tiles, int64_t cols, Fn&& fn) {
  for_tiles(row_tiles, cols, false, std::forward<Fn>(fn));
}

// dW[g] [K, N] += A[rows_g]^T [K, M_g] . B[rows_g] [M_g, N] for each group, A [R, K] and B [R, N]
// row-major; each element sums its group's rows in row order. accumulate=false: = instead of +=
// (a group without rows gets zeros), the same bits as zeroing dW first.
void add_weight_grad(const int64_t* offsets, int64_t groups, const float* A, int64_t K,
                     const float* B, int64_t N, float* dW, bool accumulate = true);

// out[g] [cols] += the sum of m's rows of group g (m [R, cols]), in row order; accumulate=false:
// = instead of +=.
void add_bias_grad(const int64_t* offsets, int64_t groups, const float* m, int64_t cols, float* out,
                   bool accumulate = true);

// dx [R, K] = dh [R, N] . W[g]^T for each group, W [groups, K, N] row-major.
void input_grad(const int64_t* offsets, int64_t groups, const float* dh, int64_t N, const float* w,
                int64_t K, float* dx);

}  // namespace sparsemoe
