// The two masked routers of the seed, on router probabilities [G,T,E] (float32):
//  * experts-choose (tf-models ExpertsChooseMaskedRouter, spec §7): each expert takes its top-C
//    tokens; slot c in descending probability, ties to the lower token index; aux loss 0.
//  * tokens-choose (flaxformer TokensChooseMaskedRouter, spec §6): each token picks its top-k
//    experts (ties to the lower expert index); all first choices are placed before any second
//    choice, in token order or, with batch-prioritized routing, by descending top-1 probability;
//    choices past capacity are dropped; combine weight = the raw probability; Switch aux loss.
// Both fill a RoutingPlan; groups are routed independently and in parallel.
#pragma once

#include <cstdint>

#include "sparsemoe/routing/routing_plan.h"

namespace sparsemoe {

// probs: [G, T, E]. Requires 0 <= C <= T.
void route_experts_choose(const float* probs, int64_t G, int64_t T, int64_t E, int64_t C,
                          RoutingPlan& plan);

// probs: [G, T, E]. 1 <= k <= E. C >= 0, or C < 0 for dropless routing (nothing dropped;
// plan.C becomes the largest (g, e) load).
void route_tokens_choose(const float* probs, int64_t G, int64_t T, int64_t E, int64_t C, int64_t k,
                         bool batch_prioritized, RoutingPlan& plan);

}  // namespace sparsemoe
