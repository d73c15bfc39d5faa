// The reference sources' dense feed-forward layer FeedForward (the backbone FFN), its config, and
// FfnWeights: the weights of E stacked FFNs ([E,H,F], [E,F,H], biases [E,F], [E,H]; E = 1 here),
// shared with FeedForwardExperts (moe/experts.h). Both run on the fused kernel in ops/expert_ffn.h.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"
#include "sparsemoe/ops/expert_ffn.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

struct FeedForwardConfig {
  int64_t d_ff = 2048;              // F
  std::string activation = "gelu";  // tf-models default: exact gelu
  double inner_dropout = 0.0;       // on the activation
  double output_dropout = 0.0;      // on the output
  bool use_bias = true;
  double kernel_init_stddev = 0.02;  // TruncatedNormal; biases start at 0
  bool glu = false;  // GLU variant: intermediate kernel [H, 2F], a = act(first half) * second

  template <class V>
  void fields(V& v) {
    v("d_ff", d_ff, "F, the inner width", at_least(1));
    v("activation", activation, "the inner activation (gelu: exact, erf)", kActivations.rule());
    v("inner_dropout", inner_dropout, "dropout on the activation", in_half_open(0, 1));
    v("output_dropout", output_dropout, "dropout on the output", in_half_open(0, 1));
    v("use_bias", use_bias, "biases on both projections");
    v("kernel_init_stddev", kernel_init_stddev, "TruncatedNormal stddev of the kernels",
      at_least(0));
    v("glu", glu, "GLU: kernel [H, 2F], a = act(first half) * second half");
  }
  nlohmann::json to_json() const { return config_to_json(*this); }
  static FeedForwardConfig from_json(const nlohmann::json& j);
  void validate(const std::string& where = "FeedForwardConfig") const {
    check_fields(*this, where);
  }
};

// Weights and gradients of E stacked FFNs (E = 1 for the dense layer).
class FfnWeights {
 public:
  // Stacked with count >= 0: holds only experts [first, first + count) of the E (expert-sharded
  // storage from the start), initialised to exactly the whole tensors' values for them.
  FfnWeights(const FeedForwardConfig& c, int64_t E, int64_t H, bool stacked, uint64_t seed,
             int64_t first = 0, int64_t count = -1);
  FfnParams params() const;
  FfnGrads grads();
  void zero_grads();
  // Writable views of the weights: drops the packed copies.
  std::vector<ParamRef> refs();
  // W1 and W2 packed once for inference (see Dense::prepare_inference for the contract); dropped
  // by refs() and by the layers' backward.
  void prepare_inference();
  void release_inference();
  int64_t packed_bytes() const { return w1_packed.bytes() + w2_packed.bytes(); }
  // Expert-sharded storage (stacked only): keeps experts [first, first + count) of the E, their
  // current values, and frees the rest. params() and grads() then cover the held experts only.
  void keep_experts(int64_t first, int64_t count);
  bool whole() const { return held == E; }

  Tensor w1, b1, w2, b2;      // [held,H,F1] [held,F1] [held,F,H] [held,H] (no E axis: unstacked)
  Tensor dw1, db1, dw2, db2;  // gradients
  int64_t E, H, F;
  int64_t expert0 = 0, held;  // the experts held: [expert0, expert0 + held); all E unless sharded
  bool stacked;
  bool sharded = false;  // keep_experts was called: the storage is split over processes
  bool use_bias;         // (b1 and b2 may be empty on a process holding no experts)
  bool glu;              // F1 = glu ? 2F : F
  Activation activation;
  float inner_dropout, output_dropout;
  uint64_t seed;
  PackedWeights w1_packed, w2_packed;  // empty unless prepared for inference
};

class FeedForward {
 public:
  FeedForward(const FeedForwardConfig& config, int64_t hidden_size, uint64_t seed = 0);
  // x: [..., H] -> y: same shape.
  void forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  // dy: [..., H] -> dx (overwritten); accumulates gradients, or writes them (GradMode).
  void backward(const Tensor& dy, Tensor& dx, GradMode mode = GradMode::kAccumulate);

  std::vector<ParamRef> params() { return weights_.refs(); }
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() {
    weights_.prepare_inference();
    return weights_.packed_bytes();
  }
  const FeedForwardConfig& config() const { return config_; }
  Shape output_shape(const Shape& input_shape) const;

 private:
  FeedForwardConfig config_;
  FfnWeights weights_;
  FfnSaved saved_;
  FfnDropout drop_;
  std::vector<uint64_t> row_ids_;
  std::vector<int64_t> offsets_;
  Tensor x_;  // [..., H] the last forward's input (a copy)
};

}  // namespace sparsemoe
