// MoeLayer (tf-models semantics, spec §2.1 and §9): [B,L,H] -> groups [G,T,H] -> router ->
// routing plan -> experts on their tokens only -> weighted combine -> [B,L,H]. The MoE layer has
// no residual of its own; tokens dispatched nowhere get exactly 0. MoeLayerWithBackbone adds a
// dense FeedForward: y = backbone(x) + moe(x).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/layers/apply_gating.h"
#include "sparsemoe/layers/feed_forward.h"
#include "sparsemoe/layers/layer_common.h"
#include "sparsemoe/layers/moe_reference.h"
#include "sparsemoe/routing/router.h"

namespace sparsemoe {

struct MoeLayerConfig {
  std::string name = "moe";
  int64_t hidden_size = 512;  // H
  FeedForwardExpertsConfig experts;
  RouterConfig router;
  double train_capacity_factor = 1.0;
  double eval_capacity_factor = 1.0;
  double examples_per_group = 1.0;  // tokens_per_group T = int(L * examples_per_group)
  int64_t min_expert_capacity = 0;  // tf-models: none; the paper and flaxformer use 4
  bool dropless = false;            // tokens-choose: no capacity limit, nothing dropped
  int64_t expert_capacity_dim = 0;  // top2: lingvo's c_dim; C = lingvo rule (spec §2.5)
  uint64_t seed = 0;                // initialisation, dropout and jitter streams

  nlohmann::json to_json() const;
  static MoeLayerConfig from_json(const nlohmann::json& j);  // strict: unknown keys are errors
  void validate() const;
};

// Returned by every forward call; names follow the seed (spec §10).
struct MoeMetrics {
  double load_balancing_loss = 0;  // unscaled (0 for experts-choose)
  double router_z_loss = 0;        // scaled by router_z_loss_weight
  double unscaled_router_z_loss = 0;
  double fraction_tokens_left_behind = 0;
  double router_confidence = 0;
  double expert_usage = 0;
  std::vector<int64_t> tokens_per_expert;  // [E]
  double over_capacity_1_ratio = 0;        // top2 (lingvo summaries); 0 for the other routers
  double over_capacity_2_ratio = 0;
  double loss = 0;  // what this layer adds to the training loss: weighted lb loss + z-loss
  int64_t num_groups = 0, tokens_per_group = 0, expert_capacity = 0;
  nlohmann::json to_json() const;
};

enum class MoePath { kSparse, kMaskedEinsum };

class MoeLayer {
 public:
  explicit MoeLayer(const MoeLayerConfig& config);

  // x: [B, L, H] -> y: [B, L, H].
  MoeMetrics forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  // dy: [B, L, H] -> dx (overwritten). Accumulates parameter gradients, including those of the
  // weighted load-balancing and z losses.
  void backward(const Tensor& dy, Tensor& dx);

  // kSparse (default): gather / per-expert GEMMs / scatter. kMaskedEinsum: the reference.
  void set_path(MoePath path) { path_ = path; }

  std::vector<ParamRef> params();
  int64_t count_params() { return sparsemoe::count_params(params()); }
  Shape output_shape(const Shape& input_shape) const;
  const MoeLayerConfig& config() const { return config_; }
  Router& router() { return router_; }
  FeedForwardExperts& experts() { return experts_; }
  const RoutingPlan& plan() const { return router_.plan(); }

 private:
  MoeLayerConfig config_;
  Router router_;
  FeedForwardExperts experts_;
  MoePath path_ = MoePath::kSparse;
  // Saved by forward, reused across calls.
  const Tensor* x_ = nullptr;
  Shape x_shape_;
  ApplyGating apply_;  // the sparse path's gather / experts / combine
  Tensor dprobs_;      // [N, E] gradient w.r.t. each (token, expert) combine weight
  FfnDropout ref_drop_;
  MoeReferenceState ref_;
};

struct MoeLayerWithBackboneConfig {
  MoeLayerConfig moe;
  FeedForwardConfig backbone;  // d_ff = backbone_d_ff
  nlohmann::json to_json() const;
  static MoeLayerWithBackboneConfig from_json(const nlohmann::json& j);
};

class MoeLayerWithBackbone {
 public:
  explicit MoeLayerWithBackbone(const MoeLayerWithBackboneConfig& config);
  MoeMetrics forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  void backward(const Tensor& dy, Tensor& dx);
  std::vector<ParamRef> params();
  int64_t count_params() { return sparsemoe::count_params(params()); }
  Shape output_shape(const Shape& s) const { return moe_.output_shape(s); }
  MoeLayer& moe() { return moe_; }
  FeedForward& backbone() { return backbone_; }

 private:
  MoeLayerWithBackboneConfig config_;
  MoeLayer moe_;
  FeedForward backbone_;
  Tensor tmp_;
};

}  // namespace sparsemoe
