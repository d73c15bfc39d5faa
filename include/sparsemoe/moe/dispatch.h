// The expert stage of an MoE layer over a RoutingPlan: dispatch (gather each expert's tokens into
// one contiguous block of rows), the experts' FFN on those rows only, and combine (sum each
// token's weighted expert outputs in the plan's fixed row order), with the backward of each.
// Dispatch and combine are free functions over the plan because they are the seam where expert
// parallelism exchanges rows between processes: with a communicator of P > 1 ranks, each rank
// owns a block of experts; dispatch sends every row to its expert's owner, which runs the FFN on
// the rows it received in the order (expert, global group, slot) -- the order one process uses --
// and combine returns the outputs. Every buffer lives in ExpertRows.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/moe/experts.h"
#include "sparsemoe/moe/routing_plan.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

// The experts rank `rank` of `size` owns: [first, first + count), first = rank * E / size. Uneven
// when size does not divide E; a rank owns none when E < size.
struct ExpertShard {
  int64_t first = 0, count = 0;
};
ExpertShard expert_shard(int64_t E, int rank, int size);

// What the expert-parallel exchange saves for the backward (R_own rows received by this rank's
// experts, expert-major; R = this rank's own plan rows).
struct ExchangeRows {
  ExpertShard shard;
  std::vector<int64_t> counts;       // [P, E] rows each rank routed to each expert
  std::vector<int64_t> send_rows;    // [P] rows this rank sends to each rank (its plan's rows)
  std::vector<int64_t> recv_rows;    // [P] rows this rank receives from each rank
  std::vector<int64_t> own_offsets;  // [count + 1] owned rows of each owned expert
  std::vector<int64_t> perm;         // [R_own] where expert-major row i sits in the received order
  std::vector<uint64_t> recv_ids, own_ids;  // [R_own] the rows' dropout counters
  Tensor recv, own_xs, own_ys;              // [R_own, H] received order; expert-major in and out
  Tensor own_dys, own_dxs;                  // [R_own, H] backward
  FfnSaved ffn;                             // the owned rows' FFN activations
  FfnDropout drop;
  double exchange_seconds = 0, compute_seconds = 0;  // of the last forward + backward
  int64_t bytes_sent = 0;                            // of the last forward + backward
};

// The expert stage's activations and workspaces (R = plan.rows()).
struct ExpertRows {
  std::vector<uint64_t> row_ids;  // [R] dense [G, E, C] slot of each row: its dropout counter
  Tensor xs;                      // [R, H] gathered expert inputs
  Tensor ys;                      // [R, H] expert outputs, before the combine weights
  FfnSaved ffn;                   // h [R, F1], a [R, F]; backward workspaces
  FfnDropout drop;                // the call's dropout keys (row_id points into row_ids)
  Tensor dys, dxs;                // [R, H] backward
  std::vector<float> dweight;     // [R] gradient w.r.t. each row's combine weight
  ExchangeRows ep;                // expert parallelism only
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
// With `comm` of more than one rank, expert parallelism: the experts are split over the ranks
// (expert_shard), every rank calls this collectively with its own groups' plan, and a rank
// computes (and accumulates gradients for) its own experts only.
void experts_forward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* x, float* y,
                     const ForwardOptions& opt, ExpertRows& rows, Communicator* comm = nullptr);
// dy [N, H] -> dx [N, H] (overwritten) and rows.dweight; accumulates the experts' gradients.
void experts_backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                      float* dx, ExpertRows& rows, Communicator* comm = nullptr);

}  // namespace sparsemoe
