// Fused expert FFN forward/backward over expert-grouped rows (see expert_ffn.h).
#include "sparsemoe/ops/expert_ffn.h"

#include <algorithm>

#include "sparsemoe/core/parallel.h"
#include "sparsemoe/ops/gemm_kernel.h"

namespace sparsemoe {

namespace {

// 512 rows: one A block of the GEMM kernel, so each weight panel is packed once per tile.
constexpr int64_t kRowTile = 512;
constexpr int64_t kWeightTile = 512;  // rows of a weight gradient per work item
constexpr int64_t kMinItems = 16;

struct RowTile {
  int64_t expert, begin, end;
};

std::vector<RowTile> row_tiles(const int64_t* offsets, int64_t E) {
  std::vector<RowTile> tiles;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; r += kRowTile)
      tiles.push_back({e, r, std::min(r + kRowTile, offsets[e + 1])});
  return tiles;
}

// Number of column tiles for `cols` columns given `row_items` row tiles (shape-only rule).
int64_t col_splits(int64_t row_items, int64_t cols) {
  int64_t s = 1;
  while (row_items * s < kMinItems && cols / (s * 2) >= 128) s *= 2;
  return s;
}

// Runs fn(tile, c0, c1) over every (row tile, column tile) pair.
template <class Fn>
void for_tiles(const std::vector<RowTile>& tiles, int64_t cols, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(tiles.size());
  const int64_t splits = col_splits(n, cols);
  const int64_t width = (cols + splits - 1) / splits;
  parallel_for(n * splits, [&](int64_t item) {
    const int64_t c0 = (item % splits) * width, c1 = std::min(cols, c0 + width);
    if (c0 < c1) fn(tiles[item / splits], c0, c1);
  });
}

// Sum over each expert's rows of m [R, cols] into out [E, cols] (+=), fixed row order.
void add_bias_grad(const int64_t* offsets, int64_t E, const float* m, int64_t cols, float* out) {
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  parallel_for(E * chunks, [&](int64_t item) {
    const int64_t e = item / chunks, c0 = (item % chunks) * kChunk;
    const int64_t c1 = std::min(cols, c0 + kChunk);
    float* o = out + e * cols;
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int64_t c = c0; c < c1; ++c) o[c] += m[r * cols + c];
  });
}

// Weight gradient dW[e] [K, N] += A[rows_e]^T [K, M_e] . B[rows_e] [M_e, N], tiled over K; each
// element sums its expert's rows in row order.
void add_weight_grad(const int64_t* offsets, int64_t E, const float* A, int64_t K, const float* B,
                     int64_t N, float* dW) {
  const int64_t tiles = (K + kWeightTile - 1) / kWeightTile;
  parallel_for(E * tiles, [&](int64_t item) {
    const int64_t e = item / tiles, k0 = (item % tiles) * kWeightTile;
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m == 0) return;
    kernel_gemm(std::min(kWeightTile, K - k0), N, m, MatRef::transposed(A + r0 * K + k0, K),
                MatRef::rows(B + r0 * N, N), dW + e * K * N + k0 * N, N, true);
  });
}

}  // namespace

void ffn_forward(const FfnParams& p, const int64_t* offsets, const float* xs, float* ys,
                 const FfnDropout& drop, FfnSaved& saved) {
  const int64_t H = p.H, F = p.F, F1 = p.width1(), R = offsets[p.E];
  saved.h.resize({R, F1});
  saved.a.resize({R, F});
  const auto tiles = row_tiles(offsets, p.E);
  const bool drop_in = drop.enabled && p.inner_dropout > 0;
  const bool drop_out = drop.enabled && p.output_dropout > 0;
  const float in_scale = dropout_scale(p.inner_dropout),
              out_scale = dropout_scale(p.output_dropout);
  float* h = saved.h.data();
  float* a = saved.a.data();
  for_tiles(tiles, F, [&](const RowTile& t, int64_t c0, int64_t c1) {
    const int64_t rows = t.end - t.begin;
    const float* w1 = p.w1 + t.expert * H * F1;
    const MatRef x = MatRef::rows(xs + t.begin * H, H);
    if (p.glu)  // the linear half first (columns F + [c0, c1)): the epilogue below reads it
      kernel_gemm(rows, c1 - c0, H, x, MatRef::rows(w1 + F + c0, F1), h + t.begin * F1 + F + c0, F1,
                  false);
    // Bias, activation, GLU product and inner dropout on each finished block, still in L1.
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
      const int64_t b0 = c0 + j0, b1 = b0 + nc;
      for (int64_t r = t.begin + r0; r < t.begin + r0 + nr; ++r) {
        float* hr = h + r * F1;
        float* ar = a + r * F;
        if (p.b1) {
          const float* b = p.b1 + t.expert * F1;
          for (int64_t j = b0; j < b1; ++j) hr[j] += b[j];
          for (int64_t j = b0; p.glu && j < b1; ++j) hr[F + j] += b[F + j];
        }
        activation_forward(p.activation, hr + b0, ar + b0, nc);
        for (int64_t j = b0; p.glu && j < b1; ++j) ar[j] *= hr[F + j];
        if (drop_in)
          for (int64_t j = b0; j < b1; ++j)
            ar[j] = dropout_keep(drop.inner_key, drop.row_id[r] * F + j, p.inner_dropout)
                        ? ar[j] * in_scale
                        : 0.f;
      }
    };
    kernel_gemm(rows, c1 - c0, H, x, MatRef::rows(w1 + c0, F1), h + t.begin * F1 + c0, F1, false,
                &epilogue);
  });
  for_tiles(tiles, H, [&](const RowTile& t, int64_t c0, int64_t c1) {
    const float* b = p.b2 ? p.b2 + t.expert * H : nullptr;
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
      for (int64_t r = t.begin + r0; r < t.begin + r0 + nr; ++r) {
        float* yr = ys + r * H;
        for (int64_t j = c0 + j0; j < c0 + j0 + nc; ++j) {
          float v = b ? yr[j] + b[j] : yr[j];
          if (drop_out)
            v = dropout_keep(drop.output_key, drop.row_id[r] * H + j, p.output_dropout)
                    ? v * out_scale
                    : 0.f;
          yr[j] = v;
        }
      }
    };
    kernel_gemm(t.end - t.begin, c1 - c0, F, MatRef::rows(a + t.begin * F, F),
                MatRef::rows(p.w2 + t.expert * F * H + c0, H), ys + t.begin * H + c0, H, false,
                &epilogue);
  });
}

void ffn_backward(const FfnParams& p, const int64_t* offsets, const float* xs, const float* dys,
                  float* dxs, const FfnDropout& drop, FfnSaved& saved, const FfnGrads& grads) {
  const int64_t H = p.H, F = p.F, F1 = p.width1(), E = p.E, R = offsets[E];
  const auto tiles = row_tiles(offsets, E);
  const bool drop_in = drop.enabled && p.inner_dropout > 0;
  const bool drop_out = drop.enabled && p.output_dropout > 0;
  const float in_scale = dropout_scale(p.inner_dropout),
              out_scale = dropout_scale(p.output_dropout);
  // g2 = d(a.W2 + b2): the output gradient through the output dropout.
  saved.g2.resize({R, H});
  float* g2 = saved.g2.data();
  parallel_for_range(R, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t j = 0; j < H; ++j) {
        float v = dys[r * H + j];
        if (drop_out)
          v = dropout_keep(drop.output_key, drop.row_id[r] * H + j, p.output_dropout)
                  ? v * out_scale
                  : 0.f;
        g2[r * H + j] = v;
      }
  });
  if (grads.b2) add_bias_grad(offsets, E, g2, H, grads.b2);
  if (grads.w2) add_weight_grad(offsets, E, saved.a.data(), F, g2, H, grads.w2);
  // da = g2 . W2[e]^T, then through inner dropout and the activation (and the GLU product):
  // dh [R, F1], stored in saved.da.
  saved.da.resize({R, F1});
  float* da = saved.da.data();
  const float* h = saved.h.data();
  for_tiles(tiles, F, [&](const RowTile& t, int64_t c0, int64_t c1) {
    // Through inner dropout and the activation (and the GLU product) on each finished block.
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
      const int64_t b0 = c0 + j0, b1 = b0 + nc;
      for (int64_t r = t.begin + r0; r < t.begin + r0 + nr; ++r) {
        float* dar = da + r * F1;
        const float* hr = h + r * F1;
        if (drop_in)
          for (int64_t j = b0; j < b1; ++j)
            dar[j] = dropout_keep(drop.inner_key, drop.row_id[r] * F + j, p.inner_dropout)
                         ? dar[j] * in_scale
                         : 0.f;
        if (p.glu) {  // a = act(h_act) * h_lin; act(h_act) is staged in the linear half's slot
          activation_forward(p.activation, hr + b0, dar + F + b0, nc);
          for (int64_t j = b0; j < b1; ++j) {
            const float g = dar[j];
            dar[F + j] *= g;
            dar[j] = g * hr[F + j];
          }
        }
        activation_backward(p.activation, hr + b0, dar + b0, dar + b0, nc);
      }
    };
    // W2[e] is [F, H]; its transpose [H, F] is read by strides.
    kernel_gemm(t.end - t.begin, c1 - c0, H, MatRef::rows(g2 + t.begin * H, H),
                MatRef::transposed(p.w2 + t.expert * F * H + c0 * H, H), da + t.begin * F1 + c0, F1,
                false, &epilogue);
  });
  if (grads.b1) add_bias_grad(offsets, E, da, F1, grads.b1);
  if (grads.w1) add_weight_grad(offsets, E, xs, H, da, F1, grads.w1);
  if (!dxs) return;
  for_tiles(tiles, H, [&](const RowTile& t, int64_t c0, int64_t c1) {
    kernel_gemm(t.end - t.begin, c1 - c0, F1, MatRef::rows(da + t.begin * F1, F1),
                MatRef::transposed(p.w1 + t.expert * H * F1 + c0 * F1, F1), dxs + t.begin * H + c0,
                H, false);
  });
}

}  // namespace sparsemoe
