// The router: dense logits [N, E] = x [N, H] . kernel [H, E] (+ bias [E]), softmaxed over experts
// in float32, with multiplicative input jitter U(1-eps, 1+eps) in training (spec §3), the router
// z-loss (spec §4), and the routing decision of the configured kind: experts-choose, tokens-choose
// top-k, or lingvo's Top-2 gating. Forward keeps what backward needs (jittered inputs, logits,
// probabilities, logsumexp per token).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/routing/routing_plan.h"
#include "sparsemoe/routing/top2_gating.h"

namespace sparsemoe {

enum class RouterType { kExpertsChoose, kTokensChoose, kTop2 };

struct RouterConfig {
  RouterType type = RouterType::kExpertsChoose;
  int64_t num_experts = 1;
  int64_t num_selected_experts = 1;        // k, tokens-choose only
  bool batch_prioritized_routing = false;  // tokens-choose only
  bool use_bias = true;                    // tf-models: Dense with bias
  double jitter_noise = 0.0;
  double router_z_loss_weight = 0.0;        // tf-models default
  double load_balancing_loss_weight = 0.0;  // tokens-choose; flaxformer/t5x use 0.01 at model level
  double kernel_init_stddev = 0.02;         // TruncatedNormal(0.02), truncated at 2 stddev
  // top2 only (lingvo Top2Gating; lingvo's gate has no bias: set use_bias false to match it).
  Top2Options top2;
  bool local_dispatch = true;   // false: all groups are gated as one merged group
  bool sample_in_eval = false;  // the sampling/random policies also draw in evaluation

  nlohmann::json to_json() const;
  static RouterConfig from_json(const nlohmann::json& j);  // strict: unknown keys are errors
  void validate() const;
};

std::string router_type_name(RouterType t);
RouterType parse_router_type(const std::string& name);

// Result of one routing forward.
struct RouterLosses {
  double router_z_loss = 0;           // scaled (weight * unscaled)
  double unscaled_router_z_loss = 0;  // mean over G*T tokens of logsumexp^2
  double load_balancing_loss = 0;     // unscaled
  double over_capacity_1_ratio = 0;   // top2 only (lingvo summaries)
  double over_capacity_2_ratio = 0;
};

class Router {
 public:
  Router(const RouterConfig& config, int64_t hidden_size, uint64_t seed);

  // x: [N, H] with N = G*T. capacity C (< 0: dropless, tokens-choose only). paddings: [N] of
  // 0/1 or null (top2 only). `key` seeds the jitter and the top2 random policies.
  RouterLosses forward(const float* x, int64_t G, int64_t T, int64_t C, bool training, uint64_t key,
                       const float* paddings = nullptr);
  // Router probabilities [N, E] from the last forward (after jitter and, for top2, with the
  // padded experts' logits masked).
  const Tensor& probs() const { return probs_; }
  const Tensor& logits() const { return logits_; }
  const RoutingPlan& plan() const { return plan_; }

  const Top2State& top2_state() const { return top2_; }

  // dcombine: [N, E] gradient of the task loss w.r.t. the combine weight of each (token, expert)
  // (read only where the plan has a row); adds the weighted aux and z-loss gradients, accumulates
  // kernel/bias gradients and adds d/dx into dx [N, H].
  void backward(const float* dcombine, float* dx);

  const RouterConfig& config() const { return config_; }
  Tensor kernel, bias;            // [H, E], [E]
  Tensor kernel_grad, bias_grad;  // same shapes, accumulated by backward

 private:
  RouterConfig config_;
  int64_t hidden_ = 0;
  // Saved by forward for backward.
  int64_t n_ = 0, groups_ = 0, tokens_ = 0;
  bool jittered_ = false;
  uint64_t jitter_key_ = 0;
  Tensor x_jit_;              // [N, H] jittered input (only when jittered_)
  Tensor logits_;             // [N, E]
  Tensor probs_;              // [N, E]
  Tensor lse_;                // [N]
  Tensor dlogits_;            // [N, E]
  Tensor dprobs_;             // [N, E] (top2: from the combine-weight gradients)
  Tensor gate_logits_;        // [N, E] top2 with padded experts: the masked logits
  Tensor dx_tmp_;             // [N, H]
  const float* x_ = nullptr;  // caller's input, valid until backward
  RoutingPlan plan_;
  Top2State top2_;
};

// Keras TruncatedNormal: normal(0, stddev) resampled until within 2 stddev; counter-based.
void fill_truncated_normal(Tensor& t, double stddev, uint64_t key);
// normal(0, stddev), counter-based; truncate_at > 0 resamples beyond that many stddevs.
void fill_normal(Tensor& t, double stddev, uint64_t key, double truncate_at = 0.0);

}  // namespace sparsemoe
