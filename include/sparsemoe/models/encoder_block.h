// One Sparse Mixer layer: a token-mixing sublayer (linear / Fourier / Hartley mixing, or
// multi-head self-attention) followed by a feed-forward sublayer (dense FFN or MoE), wired one of
// three ways (docs/sparse_mixer.md):
//   paper, post-LN (default):  a = LN1(x + Mix(x));   y = LN2(a + F(a))       (MoE included)
//   tf-models, post-LN:        a = LN1(x + Mix(x));   y = LN2(a + FFN(a)) or y = MoE(a)
//   pre-LN (norm_first):       a = x + Mix(LN1(x));   y = a + F(LN2(a))
// tf_models_compat also reproduces the dropouts tf-models filters away (no dropout on the dense
// FFN output); attention-probability and expert-output dropouts stay in both.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/nn/attention.h"
#include "sparsemoe/nn/feed_forward.h"
#include "sparsemoe/nn/layer_norm.h"
#include "sparsemoe/nn/mixing.h"

namespace sparsemoe {

struct EncoderBlockConfig {
  int64_t hidden_size = 512;
  int64_t seq_length = 512;  // the mixing layers' fixed length
  bool attention = false;    // else the mixing mechanism below
  MixingMechanism mixing = MixingMechanism::kLinear;
  bool use_fft = false;
  int64_t num_heads = 8;
  double attention_dropout = 0.1;
  bool moe = false;           // else the dense FFN below
  MoeLayerConfig moe_layer;   // hidden_size is taken from above
  ExpertPlacement placement;  // the MoE layer's experts: all, or one process's (moe_layer.h)
  FeedForwardConfig ffn;      // the dense FFN (inner_dim, activation, output dropout)
  bool norm_first = false;
  bool tf_models_compat = false;
  double init_stddev = 0.02;
  uint64_t seed = 0;
};

class EncoderBlock {
 public:
  explicit EncoderBlock(const EncoderBlockConfig& config);

  // x [B, L, H]; mask [B, L, L] (attention only; may be null) -> y. Returns the MoE metrics
  // (zeros for a dense block).
  MoeMetrics forward(const Tensor& x, const Tensor* mask, Tensor& y, const ForwardOptions& opt);
  // dy -> dx (overwritten); accumulates every parameter's gradient (MoE losses included).
  void backward(const Tensor& dy, Tensor& dx);

  std::vector<ParamRef> params();
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference();
  bool is_moe() const { return config_.moe; }
  MoeLayer* moe_layer() { return moe_.get(); }  // null for a dense block

 private:
  void mix_forward(const Tensor& in, const Tensor* mask, Tensor& out, const ForwardOptions& opt);
  void mix_backward(const Tensor& d, Tensor& dx);
  MoeMetrics forward_sublayers(const Tensor& x, const Tensor* mask, Tensor& y,
                               const ForwardOptions& opt);
  MoeMetrics ff_forward(const Tensor& in, Tensor& out, const ForwardOptions& opt);
  void ff_backward(const Tensor& d, Tensor& dx);

  EncoderBlockConfig config_;
  std::unique_ptr<MixingLayer> mixing_;
  std::unique_ptr<SelfAttention> attention_;
  std::unique_ptr<FeedForward> ffn_;
  std::unique_ptr<MoeLayer> moe_;
  LayerNorm ln1_, ln2_;
  bool residual_ff_ = true, norm_ff_ = true;  // tf-models post-LN MoE has neither
  // Saved activations (the sublayers keep pointers to their inputs).
  Tensor n1_, m_, s1_, a_, n2_, f_, s2_;
  Tensor g_, g2_, g3_, g4_;  // backward workspaces
  bool saved_ = false;       // the last forward completed and saved for a backward
};

}  // namespace sparsemoe
