// Multi-head self-attention as Keras MultiHeadAttention computes it for the Sparse Mixer's
// attention layers: Q, K, V = Dense(x) with bias ([H, heads*dh] kernels), scores = Q K^T /
// sqrt(dh) with masked positions pushed to -1e9 (so they get probability 0; a row with no
// visible key becomes uniform, as in Keras), softmax, dropout on the probabilities, context = P V,
// output = Dense(context) back to H. The scores are computed a block of query rows at a time and
// never stored whole (flash-attention style): forward keeps Q, K, V, and the backward recomputes
// each block's probabilities (bitwise the forward's) instead of reading [B, heads, L, L] back.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/dense.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

class SelfAttention {
 public:
  SelfAttention(int64_t hidden, int64_t num_heads, double dropout = 0.0, double init_stddev = 0.02,
                uint64_t seed = 0);

  // x [B, L, H]; mask [B, L, L] of 0/1 (1 = query may attend to key) or null. -> y [B, L, H].
  void forward(const Tensor& x, const Tensor* mask, Tensor& y, const ForwardOptions& opt = {});
  // dy -> dx (overwritten); accumulates the four projections' gradients.
  void backward(const Tensor& dy, Tensor& dx);

  std::vector<ParamRef> params();
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference();

 private:
  // p [rows, L] = the probabilities of query rows [i0, i0 + rows) of head bh (b * heads + h).
  void scores(int64_t bh, int64_t i0, int64_t rows, float* p) const;

  int64_t H_, heads_, dh_;
  double dropout_;
  uint64_t seed_;
  Dense q_, k_, v_, o_;
  // Saved by forward.
  int64_t B_ = 0, L_ = 0;
  bool drop_ = false;
  uint64_t drop_key_ = 0;
  int64_t drop_heads_ = 0;        // (b, h) of the counters: this call's sequences are global ones
  Tensor q_out_, k_out_, v_out_;  // [B, L, heads*dh]
  Tensor ctx_;                    // [B, L, heads*dh]
  Tensor mask_;                   // [B, L, L] copy of the mask (empty: none)
  Tensor dctx_, dq_, dk_, dv_, tmp_;
};

// Keras-style mask from a padding mask [B, L] (1 = real token): mask[b, i, j] = pad[b, j].
Tensor attention_mask_from_padding(const Tensor& input_mask);

}  // namespace sparsemoe
