// The routing decision in sparse form. Instead of dense [G,T,E,C] dispatch/combine tensors we
// keep one "row" per (token, expert) assignment, grouped by expert (expert-major, then group,
// then slot), so each expert's inputs are a contiguous block for its GEMMs. A second index lists
// each token's rows, so the combine step can sum a token's expert outputs in a fixed order.
// Memory is O(G*T*k), independent of E*C.
#pragma once

#include <cstdint>
#include <vector>

namespace sparsemoe {

struct RoutingPlan {
  int64_t G = 0, T = 0, E = 0;
  int64_t C = 0;  // capacity; with dropless routing, the largest number of rows any (g, e) got

  std::vector<int64_t> expert_offsets;  // [E+1] rows of expert e: [offsets[e], offsets[e+1])
  std::vector<int32_t> row_token;       // [R] flat token index g*T + t
  std::vector<int32_t> row_slot;        // [R] slot c within the (g, e) buffer
  std::vector<float> row_weight;        // [R] combine weight (the router probability)
  std::vector<int64_t> token_offsets;   // [G*T+1] rows of token n: token_rows[offsets[n]...]
  std::vector<int32_t> token_rows;      // [R]

  std::vector<float> density;  // [G, E] fraction of a group's tokens whose top-k holds e (TC)
  double aux_loss = 0;         // unscaled load-balancing loss (0 for experts-choose)
  int64_t valid_tokens = -1;   // non-padding tokens (top2 with paddings); -1: all G*T

  int64_t rows() const { return static_cast<int64_t>(row_token.size()); }
  int64_t row_group(int64_t r) const { return row_token[r] / T; }
  // Counter base used for dropout of row r so that the sparse path and the masked reference
  // path draw identical masks: the row's position in a dense [G, E, C] buffer.
  uint64_t dense_slot_id(int64_t expert, int64_t r) const {
    return static_cast<uint64_t>((row_group(r) * E + expert) * C + row_slot[r]);
  }

  // Lays rows out expert-major from the row count of each (g, e) block, load [G, E]: sets
  // expert_offsets, sizes the row arrays, and returns where each block starts, [G, E].
  std::vector<int64_t> layout_blocks(const std::vector<int64_t>& load);

  // Rebuilds token_offsets/token_rows from the rows (a token's rows in expert order).
  void build_token_index();

  // Dense [G,T,E,C] masks exactly as the seed's routers return them.
  void to_dense(float* dispatch, float* combine) const;
};

// Routing metrics with the seed's names (spec §10), computed from a plan.
struct RoutingStats {
  double fraction_tokens_left_behind = 0;
  double router_confidence = 0;
  double expert_usage = 0;
  std::vector<int64_t> tokens_per_expert;  // [E] rows per expert, summed over groups
};
RoutingStats routing_stats(const RoutingPlan& plan);

}  // namespace sparsemoe
