// The MoE layer written as plainly as possible, to be read and to check the fast layer
// (moe/moe_layer.h) against. Every stage is a plain loop over dense tensors, accumulated in double,
// in the reference sources' formulation: the gate; the router of each kind building the dispatch
// and combine masks [G, T, E, C] from the probabilities (tf-models' experts-choose, flaxformer's
// tokens-choose, lingvo's Top-2); the einsum gtec,gth->gech; every expert on every one of its C
// slots, empty ones too; and gtec,gech->gth. The backward is derived by hand through the same
// dense tensors. It shares nothing with the fast layer but the config, the weights it is given
// (copy_weights) and the documented random streams (moe/streams.h). O(G*T*E*C) memory; slow by
// design.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

class MoeReference {
 public:
  // Weights start at zero: copy them from a fast layer with copy_weights.
  explicit MoeReference(const MoeLayerConfig& config);

  // Copies every weight by name from `from` (a MoeLayer's params(); shapes must match).
  void copy_weights(const std::vector<ParamRef>& from);

  // x [B, L, H] -> y [B, L, H], with the fast layer's losses and metrics.
  MoeMetrics forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  // dy [B, L, H] -> dx (overwritten); accumulates every weight's gradient, the aux and z-losses'
  // (times loss_scale) included.
  void backward(const Tensor& dy, Tensor& dx, double loss_scale = 1.0);

  std::vector<ParamRef> params();                       // the fast layer's names
  const Tensor& dispatch() const { return dispatch_; }  // [G, T, E, C] of the last forward
  const Tensor& combine() const { return combine_; }    // [G, T, E, C]

 private:
  struct Top2Token {  // lingvo's choices for one token, for the backward
    int64_t e1 = 0, e2 = 0, pos1 = 0, pos2 = 0;
    bool live1 = false, live2 = false, kept1 = false, kept2 = false;
    double p1 = 0, p2 = 0;
  };
  // The jitter factor of gate-input element i (1 when not jittered), from moe/streams.h.
  float noise(int64_t i) const;
  void route(const float* paddings, bool training, bool sample, uint64_t key);
  void route_backward(const std::vector<double>& dcombine, double loss_scale,
                      std::vector<double>& dprobs) const;

  MoeLayerConfig c_;
  int64_t H_, E_, F_, F1_;
  Tensor kernel_, bias_, w1_, b1_, w2_, b2_;        // router [H, E], [E]; experts as FfnWeights
  Tensor dkernel_, dbias_, dw1_, db1_, dw2_, db2_;  // gradients

  // The last forward. N = G*T tokens.
  Shape x_shape_;
  int64_t G_ = 0, T_ = 0, C_ = 0;
  bool jittered_ = false, dropout_ = false;
  uint64_t jitter_key_ = 0, inner_key_ = 0, output_key_ = 0;
  float eps_ = 0;
  std::vector<double> gate_in_;       // [N, H]
  std::vector<double> logits_, lse_;  // [N, E], [N]
  std::vector<double> probs_;         // [N, E] softmax of the (expert-padding masked) logits
  Tensor dispatch_, combine_;         // [G, T, E, C]
  std::vector<double> density_;       // [G, E] the aux loss's density (tokens- / top2)
  std::vector<double> denom_;         // [G] top2's importance denominator
  std::vector<Top2Token> top2_;       // [N]
  std::vector<double> expert_in_;     // [G, E, C, H]
  std::vector<double> h_, a_;         // [G, E, C, F1], [G, E, C, F]
  std::vector<double> expert_out_;    // [G, E, C, H]
  MoeMetrics metrics_;
};

}  // namespace sparsemoe
