// The conditional-computation core shared by every gate: given a RoutingPlan, gather each
// expert's tokens into a contiguous block, run the experts on those rows only, and combine the
// weighted outputs back per token (lingvo's FeedForwardNetworksApplyGating, on the sparse path;
// the masked-einsum form is moe_reference.h). MoeLayer uses it, and so can any gate that fills a
// plan (Top2Gating, SentenceTop2Gating, TaskTop2Gating).
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/layers/feed_forward.h"
#include "sparsemoe/routing/routing_plan.h"

namespace sparsemoe {

class ApplyGating {
 public:
  // x [N, H] (N = plan.G * plan.T tokens) -> y [N, H]; tokens with no row get 0.
  void forward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* x, float* y,
               const ForwardOptions& opt);
  // dy [N, H] -> dx [N, H] (overwritten) and dcombine [N, E] (overwritten): the gradient w.r.t.
  // the combine weight of each (token, expert), 0 where there is no row. Accumulates the experts'
  // parameter gradients. Uses what the last forward saved.
  void backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy, float* dx,
                float* dcombine);

 private:
  Tensor xs_;                      // [R, H] gathered expert inputs
  Tensor ys_;                      // [R, H] expert outputs (before the combine weights)
  Tensor dys_, dxs_;               // [R, H] backward workspaces
  std::vector<float> dweight_;     // [R]
  std::vector<uint64_t> row_ids_;  // [R] dense [G, E, C] slot ids for dropout
};

}  // namespace sparsemoe
