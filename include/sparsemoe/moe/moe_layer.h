// MoeLayer (tf-models semantics, spec §2.1 and §9) as a pipeline of stages over one activation
// record: group [B, L, H] -> [G, T, H]; gate (jitter, logits, softmax, z-loss); routing policy
// (the plan); dispatch; expert FFN on the filled rows only; combine. The backward visits the
// same stages in reverse. The MoE layer has no residual of its own; tokens dispatched nowhere get
// exactly 0. MoeLayerWithBackbone adds a dense FeedForward: y = backbone(x) + moe(x).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/dispatch.h"
#include "sparsemoe/moe/gate.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/nn/feed_forward.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

struct MoeLayerConfig {
  std::string name = "moe";
  int64_t hidden_size = 512;  // H
  FeedForwardExpertsConfig experts;
  RouterConfig router;  // router.num_experts = experts.num_experts (JSON: given once, in experts)
  double train_capacity_factor = 1.0;
  double eval_capacity_factor = 1.0;
  double examples_per_group = 1.0;  // tokens_per_group T = int(L * examples_per_group)
  int64_t min_expert_capacity = 0;  // tf-models: none; the paper and flaxformer use 4
  bool dropless = false;            // tokens-choose: no capacity limit, nothing dropped
  int64_t expert_capacity_dim = 0;  // top2: lingvo's c_dim; C = lingvo rule (spec §2.5)
  uint64_t seed = 0;                // initialisation, dropout and jitter streams

  template <class V>
  void fields(V& v) {
    Section<RouterConfig> r{router, {"num_experts"}, "experts.num_experts"};
    v("name", name, "the layer's name");
    v("hidden_size", hidden_size, "H", at_least(1));
    v("experts", experts, "the expert FFNs (their num_experts is E for the router too)");
    v("router", r, "the router");
    v("train_capacity_factor", train_capacity_factor, "capacity factor in training", at_least(0));
    v("eval_capacity_factor", eval_capacity_factor, "capacity factor in evaluation", at_least(0));
    v("examples_per_group", examples_per_group,
      "tokens per routing group T = int(L * examples_per_group)", above(0));
    v("min_expert_capacity", min_expert_capacity, "C = max(capacity rule, this)",
      in_closed(0, kMaxExpertCapacity));
    v("dropless", dropless, "tokens_choose: no capacity limit, nothing dropped");
    v("expert_capacity_dim", expert_capacity_dim, "top2: lingvo's c_dim (0: from the factor)",
      in_closed(0, kMaxExpertCapacity));
    v("seed", seed, "initialisation, dropout and jitter streams");
  }
  void after_read(const nlohmann::json&) { router.num_experts = experts.num_experts; }
  nlohmann::json to_json() const { return config_to_json(*this); }
  static MoeLayerConfig from_json(const nlohmann::json& j);  // strict: unknown keys are errors
  void validate() const;
  CapacityRule capacity_rule(bool training) const;
};

// Returned by every forward call: the routing losses and metrics (names from the reference
// sources, spec §10) and the grouping this call used.
struct MoeMetrics : RouteResult {
  int64_t num_groups = 0, tokens_per_group = 0, expert_capacity = 0;
  nlohmann::json to_json() const;
};

// Everything one forward saves for its backward (llm.c's ActivationTensors). N = G*T = B*L.
struct MoeActivations {
  Shape x_shape;  // [B, L, H]
  int64_t G = 0, T = 0;
  // gate
  GateNoise noise;        // the jitter of this call (regenerated in backward)
  Tensor gate_in;         // [N, H] the router's input: x, times the jitter noise when jittered
  RoutingRecord routing;  // logits [N, E], probs [N, E], lse [N], the plan, the policy's state
  RouteResult routed;     // losses and metrics
  ExpertRows experts;     // dispatch -> FFN -> combine: xs, ys [R, H], h, a [R, F], row_ids [R]
  // backward workspaces
  Tensor dlogits;   // [N, E]
  Tensor dgate_in;  // [N, H]
};

// The process that builds a layer, of how many: with size > 1 the layer allocates and initialises
// only that process's experts (expert_shard(E, rank, size)), the values the whole layer has for
// them, as set_communicator(comm, true) would keep, without ever holding the others.
struct ExpertPlacement {
  int rank = 0, size = 1;
};

class MoeLayer {
 public:
  explicit MoeLayer(const MoeLayerConfig& config, ExpertPlacement placement = {});

  // x: [B, L, H] -> y: [B, L, H].
  MoeMetrics forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  // dy: [B, L, H] -> dx (overwritten). Accumulates parameter gradients, those of the weighted
  // load-balancing and z losses included, scaled by loss_scale: the factor dy carries (loss
  // scaling, gradient accumulation). GradMode::kOverwrite writes them instead: the same bits as
  // zero_grads(params()) before the call, without the zeroing pass.
  void backward(const Tensor& dy, Tensor& dx, double loss_scale = 1.0,
                GradMode mode = GradMode::kAccumulate);

  // Whether forward takes paddings (ForwardOptions::paddings): lingvo's top2 only.
  bool takes_paddings() const { return policy_->takes_paddings(); }

  std::vector<ParamRef> params();
  int64_t count_params() { return sparsemoe::count_params(params()); }
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() { return experts_.prepare_inference(); }
  Shape output_shape(const Shape& input_shape) const;
  const MoeLayerConfig& config() const { return config_; }
  GateWeights& gate() { return gate_; }
  FeedForwardExperts& experts() { return experts_; }
  const MoeActivations& activations() const { return act_; }
  const RoutingPlan& plan() const { return act_.routing.plan; }
  // Expert parallelism over `comm`'s ranks (null or one rank: none). Every rank then calls
  // forward and backward collectively, each call one data-parallel unit of the step
  // (ForwardOptions::units, token_offset, global_tokens: whole groups); a rank runs only the
  // experts it owns (expert_shard) and adds their weight gradients, a fixed tree over the step's
  // units, when the last unit's backward is done. Every other gradient (the router's) is the
  // call's own, like any layer's: the caller sums them over units and ranks
  // (train/data_parallel.h). With `shard_storage`, the rank also keeps only its own experts'
  // weights and gradients (their current values; the rest are freed): params() then lists the
  // stacked expert tensors with those experts only (ParamRef::partial), and the layer runs only
  // with a communicator of the same rank and size. Sharding cannot be undone.
  void set_communicator(Communicator* comm, bool shard_storage = false);
  // Under expert parallelism: compute this rank's own rows for its experts while the other rows
  // travel, and send the outputs (input gradients) home in `chunks` blocks of each owner's
  // experts while the next block computes (on by default, 4 chunks; the same bits either way).
  void set_overlap(bool on, int chunks = 4) {
    check_arg(chunks >= 1, "set_overlap: chunks must be >= 1, got " + std::to_string(chunks));
    act_.experts.ep.overlap = on;
    act_.experts.ep.chunks = chunks;
  }
  Communicator* communicator() const { return comm_; }

 private:
  Communicator* comm_ = nullptr;
  MoeLayerConfig config_;
  std::unique_ptr<RoutingPolicy> policy_;
  GateWeights gate_;
  FeedForwardExperts experts_;
  MoeActivations act_;
};

struct MoeLayerWithBackboneConfig {
  MoeLayerConfig moe;
  FeedForwardConfig backbone;  // d_ff = backbone_d_ff

  template <class V>
  void fields(V& v) {
    v("moe", moe, "the MoE layer");
    v("backbone", backbone, "the dense FFN added to its output");
  }
  nlohmann::json to_json() const { return config_to_json(*this); }
  static MoeLayerWithBackboneConfig from_json(const nlohmann::json& j);
};

class MoeLayerWithBackbone {
 public:
  explicit MoeLayerWithBackbone(const MoeLayerWithBackboneConfig& config);
  MoeMetrics forward(const Tensor& x, Tensor& y, const ForwardOptions& opt = {});
  void backward(const Tensor& dy, Tensor& dx, double loss_scale = 1.0,
                GradMode mode = GradMode::kAccumulate);
  std::vector<ParamRef> params();
  int64_t count_params() { return sparsemoe::count_params(params()); }
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() { return moe_.prepare_inference() + backbone_.prepare_inference(); }
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
