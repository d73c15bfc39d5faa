// The three routing policies, one file each, built only by make_policy() (routing.cc).
#pragma once

#include <memory>

#include "sparsemoe/moe/routing.h"

namespace sparsemoe {

std::unique_ptr<RoutingPolicy> make_experts_choose_policy();
std::unique_ptr<RoutingPolicy> make_tokens_choose_policy(const RouterConfig& config);
std::unique_ptr<RoutingPolicy> make_top2_policy(const RouterConfig& config);

// For the kinds other than top2: rejects expert_padding_idx and local_dispatch=false.
void check_top2_only_options(const RouterConfig& c);

// dprobs [N, E] = 0 except dprobs[token, expert] = dweight for each row (the combine weight is
// the router probability itself).
void scatter_row_gradients(const RoutingPlan& plan, const float* dweight, double* dprobs);

}  // namespace sparsemoe
