// The expert stage of an MoE layer over a RoutingPlan: dispatch (gather each expert's tokens into
// one contiguous block of rows), the experts' FFN on those rows only, and combine (sum each
// token's weighted expert outputs in the plan's fixed row order), with the backward of each.
// Dispatch and combine are free functions over the plan because they are the seam where expert
// parallelism will exchange rows between processes. Every buffer lives in ExpertRows.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/experts.h"
#include "sparsemoe/moe/routing_plan.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

// The expert stage's activations and workspaces (R = plan.rows()).
struct ExpertRows {
  std::vector<uint64_t> row_ids;  // [R] dense [G, E, C] slot of each row: its dropout counter
  Tensor xs;                      // [R, H] gathered expert inputs
  Tensor ys;                      // [R, H] expert outputs, before the combine weights
  FfnSaved ffn;                   // h [R, F1], a [R, F]; backward workspaces
  FfnDropout drop;                // the call's dropout keys (row_id points into row_ids)
  Tensor dys, dxs;                // [R, H] backward
  std::vector<float> dweight;     // [R] gradient w.r.t. each row's combine weight
};

// xs[r] = x[token of r] (x [N, H]); row_ids[r] = the row's dense slot.
void dispatch(const RoutingPlan& plan, const float* x, int64_t H, ExpertRows& rows);
// y [N, H] (overwritten) = sum over each token's rows of weight * ys; 0 for tokens with no row.
void combine(const RoutingPlan& plan, const ExpertRows& rows, int64_t H, float* y);
// dy [N, H] -> rows.dys = weight * dy[token], rows.dweight = dy[token] . ys.
void combine_backward(const RoutingPlan& plan, const float* dy, int64_t H, ExpertRows& rows);
// dx [N, H] (overwritten) = sum over each token's rows of rows.dxs.
void dispatch_backward(const RoutingPlan& plan, const ExpertRows& rows, int64_t H, float* dx);

// The whole stage, as lingvo's FeedForwardNetworksApplyGating: x [N, H] -> y [N, H].
void experts_forward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* x, float* y,
                     const ForwardOptions& opt, ExpertRows& rows);
// dy [N, H] -> dx [N, H] (overwritten) and rows.dweight; accumulates the experts' gradients.
void experts_backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                      float* dx, ExpertRows& rows);

}  // namespace sparsemoe
