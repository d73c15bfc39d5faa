// The fused expert feed-forward kernel: for rows grouped by expert (rows of expert e are
// [offsets[e], offsets[e+1]) of a contiguous buffer), computes
//   h = xs . W1[e] + b1[e];  a = dropout_in(act(h));  ys = dropout_out(a . W2[e] + b2[e])
// and its backward. The GLU variant (lingvo's wi split in two) widens W1 to [H, 2F]: with
// h = [h_act | h_lin], a = dropout_in(act(h_act) * h_lin). Only filled rows are computed: this is
// where conditional computation pays. The dense FeedForward is the same kernel with E = 1. Work is
// split into tiles (ops/tiled_gemm.h: 512 rows; columns split only when there are too few row
// tiles for the threads), each tile one single-threaded call of the GEMM kernel (ops/gemm_kernel.h)
// with the bias, activation, GLU product and dropout in its epilogue, so results are bitwise
// identical for any thread count. Inference on packed weights runs both GEMMs per row tile of at
// most 224 rows instead, its activations in a per-thread scratch (up to 224 x F1 floats of h and
// 224 x F of a, kept for the thread's lifetime) rather than in memory: the same bits. It does so
// only when those activations fit the core's L2 cache; otherwise it runs the two passes.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

struct FfnParams {
  int64_t E = 1, H = 0, F = 0;
  bool glu = false;           // W1 and b1 are twice as wide: [act half | linear half]
  const float* w1 = nullptr;  // [E, H, F1] with F1 = glu ? 2F : F
  const float* b1 = nullptr;  // [E, F1] or null
  const float* w2 = nullptr;  // [E, F, H]
  const float* b2 = nullptr;  // [E, H] or null
  Activation activation = Activation::kGelu;
  float inner_dropout = 0.f;   // on a, applied only when keys are given
  float output_dropout = 0.f;  // on ys
  // W1 and W2 packed beforehand (inference), or null: forward reads them instead of packing.
  const PackedWeights* w1_packed = nullptr;
  const PackedWeights* w2_packed = nullptr;
  int64_t width1() const { return glu ? 2 * F : F; }  // F1, the first GEMM's width
};

struct FfnGrads {  // accumulated (+=); null pointers skip that gradient
  float* w1 = nullptr;
  float* b1 = nullptr;
  float* w2 = nullptr;
  float* b2 = nullptr;
  // Written instead (GradMode::kOverwrite): a group with no rows gets zeros.
  bool overwrite = false;
};

// Dropout keys for one call; dropout is off when `enabled` is false. Element (r, j) of the inner
// activation uses counter row_id[r]*F + j, of the output row_id[r]*H + j.
struct FfnDropout {
  bool enabled = false;
  uint64_t inner_key = 0, output_key = 0;
  const uint64_t* row_id = nullptr;  // [R]
};

// Saved activations, reused across calls.
struct FfnSaved {
  Tensor h;   // [R, F1] pre-activation
  Tensor a;   // [R, F] activation after inner dropout (the input of the second GEMM)
  Tensor da;  // [R, F1] backward workspace
  Tensor g2;  // [R, H] backward workspace
};

// xs [R, H] -> ys [R, H]; fills saved.h / saved.a. save = false (inference): no backward may
// follow; saved.h is not written when the FFN has no GLU (the activation runs in place in
// saved.a), and with both weights packed and rows enough for the threads neither is: each row
// tile's activations stay in a per-thread scratch between the two GEMMs.
void ffn_forward(const FfnParams& p, const int64_t* offsets, const float* xs, float* ys,
                 const FfnDropout& drop, FfnSaved& saved, bool save = true);

// dys [R, H] -> dxs [R, H] (overwritten; may be null to skip), accumulating weight gradients.
void ffn_backward(const FfnParams& p, const int64_t* offsets, const float* xs, const float* dys,
                  float* dxs, const FfnDropout& drop, FfnSaved& saved, const FfnGrads& grads);

}  // namespace sparsemoe
