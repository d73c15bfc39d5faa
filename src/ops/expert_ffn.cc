// Fused expert FFN forward/backward over expert-grouped rows (see expert_ffn.h).
#include "sparsemoe/ops/expert_ffn.h"

#include <unistd.h>

#include <algorithm>

#include "sparsemoe/core/parallel.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

namespace {

// Rows per work item of the fused inference FFN: two of the kernel's A blocks on packed weights
// (kMcPacked), each item starting on a block boundary of its tile. Every A block streams all of
// the weights; tiles split evenly instead (236 rows as 118 + 118, each a 112-row block and a
// 6-row one) ran the MoE layer's inference 5% slower than this split (224 + 12).
constexpr int64_t kFusedRows = 224;

// The core's L2 cache in bytes, as the C library reports it (1 MiB when it reports none).
int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t{1} << 20;
  }();
  return bytes;
}

// Per-thread scratch for the fused inference FFN: grown on demand, never shrunk.
struct FusedScratch {
  Tensor h, a;
};

}  // namespace

void ffn_forward(const FfnParams& p, const int64_t* offsets, const float* xs, float* ys,
                 const FfnDropout& drop, FfnSaved& saved, bool save) {
  const int64_t H = p.H, F = p.F, F1 = p.width1(), R = offsets[p.E];
  const auto tiles = row_tiles(offsets, p.E);
  const bool drop_in = drop.enabled && p.inner_dropout > 0;
  const bool drop_out = drop.enabled && p.output_dropout > 0;
  // Without a backward to come (and without GLU, whose product reads the pre-activation's linear
  // half), the first GEMM writes straight into `a` and the activation runs there in place.
  const bool in_place = !save && !p.glu;
  auto packed = [](const PackedWeights* w, int64_t g, int64_t c0, int64_t k) {
    return w ? w->panels(g, c0, k) : nullptr;
  };
  // Columns [c0, c1) of tile t's first GEMM; hb and ab: the tile's first row of h [rows, F1] and
  // a [rows, F] (one array when in place).
  auto first = [&](const RowTile& t, int64_t c0, int64_t c1, float* hb, float* ab) {
    const int64_t rows = t.end - t.begin;
    const float* w1 = p.w1 + t.group * H * F1;
    const MatRef x = MatRef::rows(xs + t.begin * H, H);
    if (p.glu)  // the linear half first (columns F + [c0, c1)): the epilogue below reads it
      kernel_gemm(rows, c1 - c0, H, x, MatRef::rows(w1 + F + c0, F1), hb + F + c0, F1, false,
                  nullptr, packed(p.w1_packed, t.group, F + c0, H));
    // Bias, activation, GLU product and inner dropout on each finished block, still in L1.
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
      const int64_t b0 = c0 + j0, b1 = b0 + nc;
      for (int64_t i = r0; i < r0 + nr; ++i) {
        float* hr = hb + i * F1;
        float* ar = ab + i * F;
        if (p.b1) {
          const float* b = p.b1 + t.group * F1;
          for (int64_t j = b0; j < b1; ++j) hr[j] += b[j];
          for (int64_t j = b0; p.glu && j < b1; ++j) hr[F + j] += b[F + j];
        }
        if (in_place)
          activation_in_place(p.activation, ar + b0, nc);
        else
          activation_forward(p.activation, hr + b0, ar + b0, nc);
        for (int64_t j = b0; p.glu && j < b1; ++j) ar[j] *= hr[F + j];
        if (drop_in)
          dropout_span(drop.inner_key, static_cast<uint64_t>(drop.row_id[t.begin + i] * F + b0),
                       p.inner_dropout, ar + b0, ar + b0, nc);
      }
    };
    kernel_gemm(rows, c1 - c0, H, x, MatRef::rows(w1 + c0, F1), hb + c0, F1, false, &epilogue,
                packed(p.w1_packed, t.group, c0, H));
  };
  // Columns [c0, c1) of tile t's second GEMM, reading a from ab (the tile's first row).
  auto second = [&](const RowTile& t, int64_t c0, int64_t c1, const float* ab) {
    const float* b = p.b2 ? p.b2 + t.group * H : nullptr;
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
      for (int64_t r = t.begin + r0; r < t.begin + r0 + nr; ++r) {
        float* yr = ys + r * H + c0 + j0;
        if (b)
          for (int64_t j = 0; j < nc; ++j) yr[j] += b[c0 + j0 + j];
        if (drop_out)
          dropout_span(drop.output_key, static_cast<uint64_t>(drop.row_id[r] * H + c0 + j0),
                       p.output_dropout, yr, yr, nc);
      }
    };
    kernel_gemm(t.end - t.begin, c1 - c0, F, MatRef::rows(ab, F),
                MatRef::rows(p.w2 + t.group * F * H + c0, H), ys + t.begin * H + c0, H, false,
                &epilogue, packed(p.w2_packed, t.group, c0, F));
  };
  // Inference on weights packed beforehand, with rows enough to occupy the threads (four items a
  // thread, as for_tiles aims at): each item runs both GEMMs on its rows (kFusedRows at most),
  // its h and a in a per-thread scratch that stays in cache, instead of a [R, F] activation
  // written to memory by the first GEMM and read back by the second. Same bits (rows are
  // independent; every element is one FMA chain over k either way). In-process alternation on a
  // Xeon (Emerald Rapids), AVX-512: the MoE layer's inference at 4096 tokens -3 to -4% at one
  // thread, a tie at two; Fast Sparse Mixer's inference (batch 4) -1 to -4% at one thread, -2%
  // at two. With the fused order but a [R, F] array instead of the scratch, only -1%. The item's
  // activations must fit the core's L2, though: on an AMD EPYC Zen 5 (1 MiB L2) at F 2048 (1.8
  // MB of a per 224 rows) the fused path ran the same inference 0.6-1.8% slower than two passes
  // at one thread and 2-3% slower at two (in-process alternation), so there it is not taken.
  const int64_t item_bytes = kFusedRows * (F + (in_place ? 0 : F1)) * 4;
  if (!save && p.w1_packed && p.w2_packed && item_bytes <= l2_bytes()) {
    std::vector<RowTile> items;
    for (const RowTile& t : tiles)
      for (int64_t r = t.begin; r < t.end; r += kFusedRows)
        items.push_back({t.group, r, std::min(t.end, r + kFusedRows)});
    const int64_t threads = num_threads();
    if (static_cast<int64_t>(items.size()) >= (threads > 1 ? 4 * threads : 1)) {
      parallel_for(static_cast<int64_t>(items.size()), [&](int64_t i) {
        thread_local FusedScratch scratch;
        const int64_t rows = items[i].end - items[i].begin;
        scratch.a.resize({rows, F});
        if (!in_place) scratch.h.resize({rows, F1});
        float* ab = scratch.a.data();
        first(items[i], 0, F, in_place ? ab : scratch.h.data(), ab);
        second(items[i], 0, H, ab);
      });
      return;
    }
  }
  if (!in_place) saved.h.resize({R, F1});
  saved.a.resize({R, F});
  float* a = saved.a.data();
  float* h = in_place ? a : saved.h.data();  // [R, F1]
  for_tiles(tiles, F, p.w1_packed != nullptr, [&](const RowTile& t, int64_t c0, int64_t c1) {
    first(t, c0, c1, h + t.begin * F1, a + t.begin * F);
  });
  for_tiles(tiles, H, p.w2_packed != nullptr,
            [&](const RowTile& t, int64_t c0, int64_t c1) { second(t, c0, c1, a + t.begin * F); });
}

void ffn_backward(const FfnParams& p, const int64_t* offsets, const float* xs, const float* dys,
                  float* dxs, const FfnDropout& drop, FfnSaved& saved, const FfnGrads& grads) {
  const int64_t H = p.H, F = p.F, F1 = p.width1(), E = p.E, R = offsets[E];
  const auto tiles = row_tiles(offsets, E);
  const bool drop_in = drop.enabled && p.inner_dropout > 0;
  const bool drop_out = drop.enabled && p.output_dropout > 0;
  // g2 = d(a.W2 + b2): the output gradient through the output dropout.
  saved.g2.resize({R, H});
  float* g2 = saved.g2.data();
  parallel_for_range(R, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      if (drop_out)
        dropout_span(drop.output_key, static_cast<uint64_t>(drop.row_id[r] * H), p.output_dropout,
                     dys + r * H, g2 + r * H, H);
      else
        std::copy_n(dys + r * H, H, g2 + r * H);
  });
  const bool acc = !grads.overwrite;
  if (grads.b2) add_bias_grad(offsets, E, g2, H, grads.b2, acc);
  if (grads.w2) add_weight_grad(offsets, E, saved.a.data(), F, g2, H, grads.w2, acc);
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
          dropout_span(drop.inner_key, static_cast<uint64_t>(drop.row_id[r] * F + b0),
                       p.inner_dropout, dar + b0, dar + b0, nc);
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
                MatRef::transposed(p.w2 + t.group * F * H + c0 * H, H), da + t.begin * F1 + c0, F1,
                false, &epilogue);
  });
  if (grads.b1) add_bias_grad(offsets, E, da, F1, grads.b1, acc);
  if (grads.w1) add_weight_grad(offsets, E, xs, H, da, F1, grads.w1, acc);
  if (!dxs) return;
  input_grad(offsets, E, da, F1, p.w1, H, dxs);
}

}  // namespace sparsemoe
