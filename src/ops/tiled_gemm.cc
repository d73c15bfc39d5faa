// The shape-fixed tiling over kernel_gemm (see tiled_gemm.h).
#include "sparsemoe/ops/tiled_gemm.h"

#include <algorithm>
#include <cstddef>

namespace sparsemoe {

namespace {
constexpr int64_t kWeightTile = 512;    // rows of a weight gradient per work item
constexpr int64_t kMinWeightRows = 32;  // ... and the fewest when there are few items
}  // namespace

std::vector<RowTile> row_tiles(const int64_t* offsets, int64_t groups) {
  std::vector<RowTile> tiles;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = offsets[g]; r < offsets[g + 1]; r += kRowTile)
      tiles.push_back({g, r, std::min(r + kRowTile, offsets[g + 1])});
  return tiles;
}

int64_t col_splits(int64_t row_items, int64_t cols, int64_t threads, int64_t min_width) {
  // Four items per thread balance tiles of unequal rows (experts); one thread needs no split.
  const int64_t target = threads > 1 ? 4 * threads : 1;
  int64_t s = 1;
  while (row_items * s < target && cols / (s * 2) >= min_width) s *= 2;
  return s;
}

std::vector<RowTile> split_rows(std::vector<RowTile> tiles, int64_t threads, int64_t min_rows,
                                int64_t items_per_thread) {
  const size_t target = threads > 1 ? static_cast<size_t>(items_per_thread * threads) : 1;
  while (tiles.size() < target) {
    // The largest tile (the first of equals), halved if both halves keep min_rows rows.
    size_t big = 0;
    for (size_t i = 1; i < tiles.size(); ++i)
      if (tiles[i].end - tiles[i].begin > tiles[big].end - tiles[big].begin) big = i;
    if (tiles.empty() || tiles[big].end - tiles[big].begin < 2 * min_rows) break;
    const RowTile t = tiles[big];
    const int64_t mid = t.begin + (t.end - t.begin) / 2;
    tiles[big].end = mid;
    tiles.insert(tiles.begin() + static_cast<std::ptrdiff_t>(big) + 1,
                 RowTile{t.group, mid, t.end});
  }
  return tiles;
}

int64_t col_width(int64_t cols, int64_t splits) {
  return ((cols + splits - 1) / splits + 31) / 32 * 32;
}

void add_weight_grad(const int64_t* offsets, int64_t groups, const float* A, int64_t K,
                     const float* B, int64_t N, float* dW, bool accumulate) {
  // Items: (group, K tile, column tile); columns split like for_tiles when there are few items.
  int64_t ktile = kWeightTile;
  // Down to 64 columns: at H 64 (README's main job) a dense layer's 128-column weight gradient
  // was one work item, one GEMM on one thread while the others waited. Its rows are K (features),
  // never few, so narrow tiles cost the kernel nothing.
  const int64_t threads = num_threads();
  auto k_tiles = [&] { return (K + ktile - 1) / ktile; };
  const int64_t splits = col_splits(groups * k_tiles(), N, threads, 64),
                width = col_width(N, splits);
  // Then rows: a 64 x 64 or 128 x 64 weight gradient (attention, the dense FFN's output at H 64)
  // was still one item. In the main job's training at 2 threads (AVX2, Xeon Emerald Rapids) the
  // second thread had no work 36% of the time, single-item weight gradients 8 points of it
  // (perf). So K tiles are halved, down to kMinWeightRows rows, until every thread has an item;
  // the bits do not change (each element is still one FMA chain over the rows of A and B).
  while (threads > 1 && groups * k_tiles() * splits < threads && ktile / 2 >= kMinWeightRows)
    ktile /= 2;
  const int64_t tiles = k_tiles();
  parallel_for(groups * tiles * splits, [&](int64_t item) {
    const int64_t g = item / (tiles * splits), k0 = (item / splits % tiles) * ktile;
    const int64_t c0 = (item % splits) * width, c1 = std::min(N, c0 + width);
    const int64_t r0 = offsets[g], m = offsets[g + 1] - r0;
    if (c0 >= c1) return;
    const int64_t rows = std::min(ktile, K - k0);
    float* out = dW + g * K * N + k0 * N + c0;
    // A group without tokens (m = 0) reads nothing (no pointer into A or B is formed: it could
    // point past their end): zeros when written, unchanged when accumulated.
    const float* a = m ? A + r0 * K + k0 : nullptr;
    const float* b = m ? B + r0 * N + c0 : nullptr;
    weight_grad_gemm(rows, c1 - c0, m, a, K, b, N, out, N, accumulate);
  });
}

void add_bias_grad(const int64_t* offsets, int64_t groups, const float* m, int64_t cols, float* out,
                   bool accumulate) {
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  // Each column's sum runs in a local array (the same additions in the same order as into `out`):
  // added into `out` itself, which the compiler must assume may alias `m`, the loop reloaded and
  // stored every sum for each row: the expert FFN's [4096, 2048] bias gradient (16 experts) took
  // 4.2 ms, 8 GB/s, on an AMD EPYC Zen 5, one thread; 2.4 ms this way. Same bits.
  parallel_for(groups * chunks, [&](int64_t item) {
    const int64_t g = item / chunks, c0 = (item % chunks) * kChunk;
    const int64_t w = std::min(cols, c0 + kChunk) - c0;
    float* o = out + g * cols + c0;
    alignas(64) float sum[kChunk];
    for (int64_t c = 0; c < w; ++c) sum[c] = accumulate ? o[c] : 0.f;
    for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r) {
      const float* row = m + r * cols + c0;
#pragma omp simd
      for (int64_t c = 0; c < w; ++c) sum[c] += row[c];
    }
    std::copy_n(sum, w, o);
  });
}

void input_grad(const int64_t* offsets, int64_t groups, const float* dh, int64_t N, const float* w,
                int64_t K, float* dx) {
  for_tiles(row_tiles(offsets, groups), K, [&](const RowTile& t, int64_t c0, int64_t c1) {
    kernel_gemm(t.end - t.begin, c1 - c0, N, MatRef::rows(dh + t.begin * N, N),
                MatRef::transposed(w + t.group * K * N + c0 * N, N), dx + t.begin * K + c0, K,
                false);
  });
}

}  // namespace sparsemoe
