// FeedForwardExperts: E independent FFNs with stacked weights (nn/feed_forward.h FfnWeights), with
// the reference sources' dense API ([G,E,C,H] in and out, every slot computed). The MoE layer runs
// the same weights on filled rows only (moe/dispatch.h).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/feed_forward.h"
#include "sparsemoe/nn/layer_common.h"
#include "sparsemoe/ops/expert_ffn.h"

namespace sparsemoe {

struct FeedForwardExpertsConfig : FeedForwardConfig {
  int64_t num_experts = 1;  // E

  template <class V>
  void fields(V& v) {
    v("num_experts", num_experts, "E, the number of experts", at_least(1));
    FeedForwardConfig::fields(v);
  }
  nlohmann::json to_json() const { return config_to_json(*this); }
  static FeedForwardExpertsConfig from_json(const nlohmann::json& j);
  void validate(const std::string& where = "FeedForwardExpertsConfig") const {
    check_fields(*this, where);
  }
};

class FeedForwardExperts {
 public:
  // count >= 0: holds only experts [first, first + count) (expert-sharded storage from the start).
  FeedForwardExperts(const FeedForwardExpertsConfig& config, int64_t hidden_size, uint64_t seed = 0,
                     int64_t first = 0, int64_t count = -1);
  // The dense API: x [G, E, C, H] -> y [G, E, C, H].
  void forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  void backward(const Tensor& dy, Tensor& dx);

  std::vector<ParamRef> params() { return weights_.refs(); }
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() {
    weights_.prepare_inference();
    return weights_.packed_bytes();
  }
  const FeedForwardExpertsConfig& config() const { return config_; }
  FfnWeights& weights() { return weights_; }
  // The dropout streams of one call (keyed by the layer seed and opt.step).
  FfnDropout dropout(const ForwardOptions& opt, const uint64_t* row_ids) const;
  Shape output_shape(const Shape& input_shape) const;

 private:
  FeedForwardExpertsConfig config_;
  FfnWeights weights_;
  // Dense API: expert-major copies of the [G,E,C,H] input/output, saved activations.
  FfnSaved saved_;
  FfnDropout drop_;
  Tensor dense_x_, dense_y_;
  std::vector<int64_t> dense_offsets_;
  std::vector<uint64_t> dense_ids_;
  int64_t dense_g_ = 0, dense_c_ = 0;
};

}  // namespace sparsemoe
