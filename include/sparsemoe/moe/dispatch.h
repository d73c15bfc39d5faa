// The expert stage of an MoE layer over a RoutingPlan: dispatch (gather each expert's tokens into
// one contiguous block of rows), the experts' FFN on those rows only, and combine (sum each
// token's weighted expert outputs in the plan's fixed row order), with the backward of each.
// Dispatch and combine are free functions over the plan because they are the seam where expert
// parallelism exchanges rows between processes: with a communicator of P > 1 ranks, each rank
// owns a block of experts and holds one data-parallel unit of the batch per call; dispatch sends
// every row to its expert's owner, which runs the FFN on each source's rows in that source's plan
// order, keeps each unit's weight gradients apart (ExpertGradParts) and adds them as a fixed tree
// once the step's units are all in; combine returns the outputs. Every buffer lives in ExpertRows.
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

// An owned expert's weight gradients under expert parallelism, one part per data-parallel unit
// of the step (ForwardOptions::units): each part is one FMA chain from zero over that unit's rows,
// as in one process running the unit alone. When every unit's part is in, they are added as
// tree_sum's tree into the gradients, so the owner's gradients equal one process's tree over the
// same units bit for bit. [units, owned] with owned = the shard's w1 | b1 | w2 | b2 blocks.
struct ExpertGradParts {
  Tensor data;
  std::vector<char> filled;  // [units]
  int64_t count = 0;         // parts filled so far in this step
};

// What the expert-parallel exchange saves for the backward. Rows are kept in the order they
// arrive: source rank, then owned expert, then that rank's plan order (group, slot).
struct ExchangeRows {
  ExpertShard shard;
  std::vector<int64_t> counts;       // [P, E + 1] each rank's rows per expert, then its unit
  std::vector<int64_t> send_rows;    // [P] rows this rank sends to each rank (its plan's rows)
  std::vector<int64_t> recv_rows;    // [P] rows this rank receives from each rank
  std::vector<int64_t> base;         // [P + 1] where each source's rows start
  std::vector<int64_t> offsets;      // [P, count + 1] owned experts' rows within each source
  std::vector<int64_t> source_unit;  // [P] the data-parallel unit each source's call holds
  std::vector<uint64_t> recv_ids;    // [R_own] the rows' dropout counters
  Tensor recv, own_ys, own_dys;      // [R_own, H] received rows, outputs, output gradients
  Tensor own_dxs;                    // [R_own, H] input gradients
  std::vector<FfnSaved> ffn;         // [P, used_chunks] each (source, chunk) call's activations
  std::vector<FfnSaved> own_ffn;     // [count] with overlap: this rank's own rows, per expert
  bool overlap = true;               // compute own rows while the others' travel, and send the
                                     // outputs home in chunks while the next chunk computes
  int chunks = 4;                    // with overlap: return chunks (of each owner's experts)
  int used_chunks = 1;               // the last forward's (its backward uses the same)
  bool overlapped = false;           // the last forward did (its backward does the same)
  bool replicated = false;           // the last forward was replicated (no backward)
  FfnDropout drop;                   // the call's keys (row ids point into recv_ids)
  ExpertGradParts parts;             // across the step's calls
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
// (expert_shard), every rank calls this collectively with its own groups' plan, which is one
// data-parallel unit (`unit` of `units`), and a rank computes its own experts only.
void experts_forward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* x, float* y,
                     const ForwardOptions& opt, ExpertRows& rows, Communicator* comm = nullptr,
                     int64_t unit = 0, int64_t units = 1);
// Inference on every rank of `comm` holding the same tokens (evaluation with expert-sharded
// storage, ForwardOptions::replicated): each rank runs its own experts on its copy of their rows,
// one block of the expert-major plan, and broadcasts the outputs, so every rank gets the layer's
// whole output, bit for bit what one process computes. No backward.
void experts_forward_replicated(const RoutingPlan& plan, FeedForwardExperts& experts,
                                const float* x, float* y, const ForwardOptions& opt,
                                ExpertRows& rows, Communicator& comm);
// dy [N, H] -> dx [N, H] (overwritten) and rows.dweight; accumulates the experts' gradients (under
// expert parallelism: when the step's last unit is in, the owned experts' tree of unit parts), or
// with GradMode::kOverwrite writes them (under expert parallelism: zeroes the held experts'
// gradients first, as zero_grads before the call would).
void experts_backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                      float* dx, ExpertRows& rows, Communicator* comm = nullptr,
                      GradMode mode = GradMode::kAccumulate);

}  // namespace sparsemoe
