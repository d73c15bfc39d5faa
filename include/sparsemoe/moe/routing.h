// Routing: from router logits [G, T, E] to a RoutingPlan, with the auxiliary losses and metrics.
// Each router kind is a RoutingPolicy holding all of that kind's rules (capacity, decision, aux
// loss and the aux loss's gradient), one file each in src/moe/; make_policy() is the only place
// that switches on the kind. route_logits() is the one entry that the MoE layer, lingvo's gates,
// `sparsemoe route` and the tests use: softmax, z-loss, the policy's decision, metrics.
// route_logits_backward() is its reverse: per-row combine-weight gradients -> dlogits.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/routing_plan.h"

namespace sparsemoe {

enum class RouterType { kExpertsChoose, kTokensChoose, kTop2 };
inline constexpr EnumNames<RouterType, 3> kRouterTypes{{"experts_choose", "tokens_choose", "top2"}};
inline std::string router_type_name(RouterType t) { return kRouterTypes(t); }
inline RouterType parse_router_type(const std::string& name) {
  return kRouterTypes.parse(name, "router type");
}
inline void to_json(nlohmann::json& j, RouterType t) { j = kRouterTypes(t); }
inline void from_json(const nlohmann::json& j, RouterType& t) {
  t = parse_router_type(j.get<std::string>());
}

enum class SecondExpertPolicy {
  kAll,       // greedy: the second-largest gate
  kSampling,  // Gumbel-max sample from the softmax with the first expert excluded
  kRandom,    // the greedy second expert, kept with probability gate2 / threshold
};
inline constexpr EnumNames<SecondExpertPolicy, 3> kSecondExpertPolicies{
    {"all", "sampling", "random"}};
inline std::string second_expert_policy_name(SecondExpertPolicy p) {
  return kSecondExpertPolicies(p);
}
inline void to_json(nlohmann::json& j, SecondExpertPolicy p) { j = kSecondExpertPolicies(p); }
inline void from_json(const nlohmann::json& j, SecondExpertPolicy& p) {
  p = kSecondExpertPolicies.parse(j.get<std::string>(), "second_expert_policy");
}

// lingvo Top-2 options (spec §8).
struct Top2Options {
  SecondExpertPolicy second_expert_policy = SecondExpertPolicy::kAll;
  double second_expert_threshold = 0.0;     // for kRandom; values below 1e-9 act as 1e-9
  bool legacy_mtf_behavior = true;          // renormalise the two gates before the capacity drop
  std::vector<int64_t> expert_padding_idx;  // experts that never receive tokens (logit -> -0.7*max)

  template <class V>
  void fields(V& v) {
    v("second_expert_policy", second_expert_policy,
      "top2: all (greedy), sampling (Gumbel-max) or random (kept with probability gate2 / "
      "threshold)",
      kSecondExpertPolicies.rule());
    v("second_expert_threshold", second_expert_threshold,
      "top2, random policy: values below 1e-9 act as 1e-9", at_least(0));
    v("legacy_mtf_behavior", legacy_mtf_behavior,
      "top2: renormalise the two gates before the capacity drop");
    v("expert_padding_idx", expert_padding_idx,
      "top2: experts that never receive tokens (their logits set to -0.7 * max float)",
      at_least(0));
  }
};

struct RouterConfig {
  RouterType type = RouterType::kExpertsChoose;
  int64_t num_experts = 1;
  int64_t num_selected_experts = 1;        // k, tokens-choose only (top2: 2)
  bool batch_prioritized_routing = false;  // tokens-choose only
  bool use_bias = true;                    // tf-models: Dense with bias
  double jitter_noise = 0.0;
  double router_z_loss_weight = 0.0;        // tf-models default
  double load_balancing_loss_weight = 0.0;  // tokens-choose, top2; flaxformer/t5x use 0.01
  double kernel_init_stddev = 0.02;         // TruncatedNormal(0.02), truncated at 2 stddev
  Top2Options top2;             // top2 only (lingvo's gate has no bias: set use_bias false)
  bool local_dispatch = true;   // top2 only; false: all groups are gated as one merged group
  bool sample_in_eval = false;  // top2 only: the sampling/random policies also draw in eval

  template <class V>
  void fields(V& v) {
    v("type", type, "the router kind (docs/routers.md)", kRouterTypes.rule());
    v("num_experts", num_experts, "E", at_least(1));
    v("num_selected_experts", num_selected_experts,
      "k, experts per token: tokens_choose (default 1); top2 always 2 (its default)", at_least(1));
    v("batch_prioritized_routing", batch_prioritized_routing,
      "tokens_choose: fill capacity in order of router confidence, not token position");
    v("use_bias", use_bias, "a bias on the router's logits (lingvo's gate has none)");
    v("jitter_noise", jitter_noise, "training: x *= uniform(1 - eps, 1 + eps) before the router",
      in_half_open(0, 1));
    v("router_z_loss_weight", router_z_loss_weight, "weight of the router z-loss in the loss",
      at_least(0));
    v("load_balancing_loss_weight", load_balancing_loss_weight,
      "weight of the load-balancing loss (tokens_choose, top2)", at_least(0));
    v("kernel_init_stddev", kernel_init_stddev, "TruncatedNormal stddev of the router kernel",
      at_least(0));
    top2.fields(v);  // flat: the top2 options sit beside the others
    v("local_dispatch", local_dispatch, "top2: false gates all groups as one merged group");
    v("sample_in_eval", sample_in_eval, "top2: the sampling / random policies draw in eval too");
  }
  // After reading JSON: k defaults to the kind's own (2 for top2) when the JSON leaves it out.
  void after_read(const nlohmann::json& j);
  nlohmann::json to_json() const { return config_to_json(*this); }
  static RouterConfig from_json(const nlohmann::json& j);  // strict: unknown keys are errors
  void validate() const;                                   // includes the kind's own rules
};

// The largest expert capacity C: slots are 32-bit in a plan, and 2^31 - 4 is a multiple of 4 (so
// lingvo's rounding up stays below 2^31). Larger capacities are refused, never wrapped.
inline constexpr int64_t kMaxExpertCapacity = 2147483644;

// The capacity settings a policy turns into C for T tokens per group.
struct CapacityRule {
  double capacity_factor = 1.0;
  int64_t min_expert_capacity = 0;  // experts-/tokens-choose: C = max(rule, this)
  bool dropless = false;            // tokens-choose: no limit, nothing dropped
  int64_t expert_capacity_dim = 0;  // top2: lingvo's c_dim
};

// Per-token choices of lingvo's Top-2, saved for its backward (and the lingvo summaries).
struct Top2Choice {
  int32_t e1 = 0, e2 = 0;  // first and second expert
  float p1 = 0, p2 = 0;    // their gates after the padding masks (0 when masked)
  bool kept1 = false;      // first choice inside capacity
  bool kept2 = false;      // second choice sampled (kRandom) and inside capacity
  bool live1 = false;      // first choice allowed (importance 1): p1 is probs[e1], else 0
  bool live2 = false;      // p2 is probs[e2]
};

// What a policy's forward leaves for its backward; kinds use the fields their comment names.
struct PolicySaved {
  std::vector<float> density;    // [G, E] the aux loss's density (tokens-choose, top2)
  std::vector<float> denom;      // [G] top2: 1 (legacy) or mean(importance) + 1e-6
  std::vector<Top2Choice> top2;  // [N] top2
  double aux_loss = 0;           // unscaled load-balancing loss (0 for experts-choose)
  int64_t valid_tokens = -1;     // non-padding tokens; -1: all G*T
  double over_capacity_1_ratio = 0, over_capacity_2_ratio = 0;  // top2 (lingvo summaries)
};

// One routing call's inputs beside the probabilities.
struct RouteArgs {
  const float* probs = nullptr;       // [G, T, E]
  const float* logits = nullptr;      // [G, T, E] what probs were softmaxed from (sampling)
  const float* paddings = nullptr;    // [G, T] of 0/1 or null
  const float* importance = nullptr;  // [G, T] in [0, 1] or null; replaces 1 - paddings (top2)
  int64_t G = 0, T = 0, E = 0;
  int64_t C = 0;        // from capacity(); < 0: dropless
  bool sample = false;  // top2's random policies draw
  uint64_t key = 0;     // their counter key
  // Many processes: these are groups [group_offset, group_offset + G) of global_groups (0: G).
  int64_t group_offset = 0, global_groups = 0;
  int64_t total_groups() const { return global_groups > 0 ? global_groups : G; }
};

class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  // The kind's own option rules (called by RouterConfig::validate).
  virtual void validate(const RouterConfig& c) const = 0;
  // C for T tokens per group of E experts; < 0 means dropless. Throws when the rule cannot hold.
  virtual int64_t capacity(const CapacityRule& rule, int64_t T, int64_t E) const = 0;
  virtual bool takes_paddings() const { return false; }
  // Experts per token when the config does not say (num_selected_experts).
  virtual int64_t default_k() const { return 1; }
  // Whether the result's over_capacity ratios are meaningful (lingvo's summaries).
  virtual bool reports_over_capacity() const { return false; }
  // Whether route() draws random numbers from RouteArgs::key (top2's sampling policies).
  virtual bool draws_with_key() const { return false; }
  // The decision: fills plan and saved (aux loss included).
  virtual void route(const RouteArgs& a, RoutingPlan& plan, PolicySaved& saved) const = 0;
  // dweight [R]: gradient of the task loss w.r.t. each plan row's combine weight. Writes dprobs
  // [N, E] (overwritten): the gradient w.r.t. the probabilities, plus aux_weight * d aux / d p.
  virtual void backward(const RoutingPlan& plan, const PolicySaved& saved, const float* dweight,
                        double aux_weight, double* dprobs) const = 0;
};

// The only switch on the router kind.
std::unique_ptr<RoutingPolicy> make_policy(const RouterConfig& config);

// Losses and metrics of one routing call, under the reference sources' names (spec §10).
struct RouteResult {
  double load_balancing_loss = 0;  // unscaled
  double router_z_loss = 0;        // scaled by router_z_loss_weight
  double unscaled_router_z_loss = 0;
  double fraction_tokens_left_behind = 0;
  double router_confidence = 0;
  double expert_usage = 0;
  std::vector<int64_t> tokens_per_expert;  // [E]
  double over_capacity_1_ratio = 0;        // top2; 0 for the other kinds
  double over_capacity_2_ratio = 0;
  double loss = 0;  // what routing adds to the training loss: weighted aux loss + z-loss
};

// Everything route_logits saves for route_logits_backward.
struct RoutingRecord {
  int64_t G = 0, T = 0, E = 0;
  Tensor logits;       // [N, E] the router's logits (read, not changed)
  Tensor gate_logits;  // [N, E] logits with expert_padding_idx masked (only when masking)
  Tensor probs;        // [N, E] softmax of the (masked) logits
  Tensor lse;          // [N] logsumexp of the unmasked logits (z-loss)
  RoutingPlan plan;
  PolicySaved saved;
  std::vector<double> dprobs;  // [N, E] backward workspace
};

// logits [G*T, E] are copied into rec.logits; C from policy.capacity(). paddings [G*T] of 0/1 or
// null (only for kinds that take them). training selects top2 sampling (or sample_in_eval), drawn
// from the RNG key `key`.
RouteResult route_logits(const RoutingPolicy& policy, const RouterConfig& config,
                         const float* logits, int64_t G, int64_t T, int64_t C,
                         const float* paddings, bool training, uint64_t key, RoutingRecord& rec,
                         int64_t group_offset = 0, int64_t global_groups = 0);
// dweight [R] -> dlogits [G*T, E] (overwritten), with the aux and z-loss gradients scaled by
// loss_scale (the factor the caller's task-loss gradient carries).
void route_logits_backward(const RoutingPolicy& policy, const RouterConfig& config,
                           RoutingRecord& rec, const float* dweight, double loss_scale,
                           float* dlogits);

// A standalone routing problem, answered densely (`sparsemoe route`, the Python package's
// route()): logits [G, T, E] routed by one router as in training, giving the capacity, the
// dispatch and combine tensors [G, T, E, C] and the losses and metrics.
struct DenseRouteOptions {
  int64_t capacity = -1;            // C; -1: from capacity_factor (the router's own rule)
  double capacity_factor = 1.0;     // the reference sources' default
  const float* paddings = nullptr;  // [G, T] of 0/1 (1 = padding), for the kinds that take them
  bool seeded = false;              // a seed given (refused by the kinds that draw nothing)
  uint64_t seed = 0;
  int64_t max_cells = int64_t{1} << 20;  // the most values each dense answer may hold
};
struct DenseRoute {
  int64_t C = 0;
  std::vector<float> dispatch, combine;  // [G, T, E, C]: 0/1, and the combine weights
  RouteResult result;
  bool reports_over_capacity = false;  // the kind has over_capacity_1/2 metrics (top2)
};
// Throws InvalidArgument naming the option at fault (a non-finite logit, a capacity out of range,
// a seed for a router that draws nothing, an answer above max_cells).
DenseRoute route_dense(const RouterConfig& config, const float* logits, int64_t G, int64_t T,
                       const DenseRouteOptions& options);

// Routing metrics computed from a plan; valid_tokens < 0 counts all tokens.
RouteResult plan_metrics(const RoutingPlan& plan, int64_t valid_tokens);

// Python's round(): ties go to the even neighbour (round(2.5) == 2, round(0.5) == 0).
int64_t round_half_even(double x);
// tf-models' rule: C = max(round_half_even(cf*T/E), min_capacity).
int64_t expert_capacity(double capacity_factor, int64_t tokens_per_group, int64_t num_experts,
                        int64_t min_capacity = 0);
// lingvo's rule (spec §2.5): with cf > 0, auto = int(S*cf/E), 0 -> 4; C = expert_capacity_dim if
// it is at least auto, else auto rounded up to a multiple of 4. With cf <= 0: expert_capacity_dim.
int64_t lingvo_expert_capacity(int64_t expert_capacity_dim, double capacity_factor, int64_t S,
                               int64_t E);

struct Grouping {
  int64_t num_groups;        // G
  int64_t tokens_per_group;  // T
};
// T = int(L * examples_per_group), G = B*L/T; throws naming examples_per_group when impossible.
Grouping compute_grouping(int64_t batch, int64_t length, double examples_per_group);

}  // namespace sparsemoe
