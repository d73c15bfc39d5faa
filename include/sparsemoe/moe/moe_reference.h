// The reference path: the reference sources' MoE computation written as plainly as possible, over
// dense [G,T,E,C] dispatch/combine masks, with a plain-loop FeedForwardExperts that computes every
// [G,E,C] slot (empty ones too). It exists to be read and to check the sparse path against;
// it is O(G*T*E*C) in memory and slow by design.
#pragma once

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/routing_plan.h"
#include "sparsemoe/ops/expert_ffn.h"

namespace sparsemoe {

struct MoeReferenceState {
  Tensor dispatch, combine;  // [G, T, E, C]
  Tensor expert_in;          // [G, E, C, H]
  Tensor h, a;               // [G, E, C, F] pre-activation, activation after inner dropout
  Tensor expert_out;         // [G, E, C, H]
};

// x [G*T, H] -> y [G*T, H]. drop.row_id is ignored: slot (g, e, c) uses id (g*E + e)*C + c,
// which is what the sparse path uses for the same slot.
void moe_reference_forward(const FfnParams& p, const RoutingPlan& plan, const float* x, float* y,
                           const FfnDropout& drop, MoeReferenceState& s);

// dy [G*T, H] -> dx [G*T, H] (overwritten), dprobs [G*T, E] (overwritten), weight grads (+=).
void moe_reference_backward(const FfnParams& p, const RoutingPlan& plan, const float* dy, float* dx,
                            float* dprobs, const FfnDropout& drop, MoeReferenceState& s,
                            const FfnGrads& grads);

}  // namespace sparsemoe
