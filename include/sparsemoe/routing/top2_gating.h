// GShard Top-2 gating as lingvo computes it (Top2GatingOnLogits, spec §8): first expert by argmax,
// second by one of three policies, lingvo's capacity rule (spec §2.5), second choices placed after
// the kept first choices, gate renormalisation before (legacy) or after the capacity drop, the
// top-1 aux loss (spec §5.2) and the over-capacity summaries. The result is the same sparse
// RoutingPlan the other routers fill, so dispatch/combine/experts are shared; backward maps the
// gradient of each combine weight to the router probabilities.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsemoe/routing/routing_plan.h"

namespace sparsemoe {

enum class SecondExpertPolicy {
  kAll,       // greedy: the second-largest gate
  kSampling,  // Gumbel-max sample from the softmax with the first expert excluded
  kRandom,    // the greedy second expert, kept with probability gate2 / threshold
};
std::string second_expert_policy_name(SecondExpertPolicy p);
SecondExpertPolicy parse_second_expert_policy(const std::string& name);

struct Top2Options {
  SecondExpertPolicy second_expert_policy = SecondExpertPolicy::kAll;
  double second_expert_threshold = 0.0;     // for kRandom; values below 1e-9 act as 1e-9
  bool legacy_mtf_behavior = true;          // renormalise the two gates before the capacity drop
  std::vector<int64_t> expert_padding_idx;  // experts that never receive tokens (logit -> -0.7*max)
};

// lingvo's capacity rule: with capacity_factor > 0, auto = int(S*cf/E) (truncation), 0 -> 4; if
// expert_capacity_dim < auto then C = auto rounded up to a multiple of 4, else C =
// expert_capacity_dim. With capacity_factor <= 0 (unset), C = expert_capacity_dim.
int64_t lingvo_expert_capacity(int64_t expert_capacity_dim, double capacity_factor, int64_t S,
                               int64_t E);

// What backward needs, per token and per group; also the lingvo summaries.
struct Top2State {
  int64_t G = 0, S = 0, E = 0, C = 0;
  struct Token {
    int32_t e1 = 0, e2 = 0;  // first and second expert
    float p1 = 0, p2 = 0;    // their raw gates after the padding masks (0 when masked)
    bool kept1 = false;      // first choice inside capacity
    bool kept2 = false;      // second choice sampled (kRandom) and inside capacity
    bool live1 = false;      // first choice allowed (importance 1): p1 is raw[e1] (else the
                             // constant 0) and the token enters the aux loss's proxy
    bool live2 = false;      // p2 is raw[e2]
  };
  std::vector<Token> tokens;    // [G*S]
  std::vector<float> density1;  // [G, E] top-1 density before the drop, / denom
  std::vector<float> denom;     // [G] 1 (legacy) or mean(importance) + 1e-6
  bool legacy = true;
  double aux_loss = 0;
  double over_capacity_1_ratio = 0, over_capacity_2_ratio = 0;
  int64_t valid_tokens = 0;  // non-padding tokens
};

// Applies expert_padding_idx to logits [N, E] in place (lingvo sets them to -0.7 * float max).
void mask_padded_experts(float* logits, int64_t N, int64_t E, const Top2Options& opt);

// Routes probs [G, S, E] (softmax of the masked logits [G, S, E]; the logits are read only by the
// sampling policy). paddings [G, S] of 0/1, or null; importance [G, S] in [0, 1], or null: when
// given it replaces 1 - paddings (first choices need importance == 1, second choices > 0).
// C from lingvo_expert_capacity. `sample` turns the random policies on (training; off in eval,
// where both act as kAll); draws are counter-based on `key`, so a seed reproduces them.
void route_top2(const float* probs, const float* logits, const float* paddings,
                const float* importance, int64_t G, int64_t S, int64_t E, int64_t C,
                const Top2Options& opt, bool sample, uint64_t key, RoutingPlan& plan,
                Top2State& state);

// Top2GatingOnLogits in one call: copies logits [G, S, E], masks the padded experts, softmaxes
// into probs (resized to G*S*E) and routes with C = lingvo_expert_capacity(...).
void top2_gating_on_logits(const float* logits, const float* paddings, const float* importance,
                           int64_t G, int64_t S, int64_t E, int64_t expert_capacity_dim,
                           double capacity_factor, const Top2Options& opt, bool sample,
                           uint64_t key, std::vector<float>& probs, RoutingPlan& plan,
                           Top2State& state);

// dcombine [G*S, E]: gradient of the loss w.r.t. the combine weight of (token, expert) (read only
// where the plan has a row). aux_weight: the aux loss's weight in the total loss. Writes dprobs
// [G*S, E] (overwritten): the gradient w.r.t. the probabilities given to route_top2.
void route_top2_backward(const Top2State& state, const float* dcombine, double aux_weight,
                         float* dprobs);

}  // namespace sparsemoe
