// The routing decision in sparse form. Instead of dense [G,T,E,C] dispatch/combine tensors we
// keep one "row" per (token, expert) assignment, grouped by expert (expert-major, then group,
// then slot), so each expert's inputs are a contiguous block for its GEMMs. A second index lists
// each token's rows, so the combine step can sum a token's expert outputs in a fixed order.
// Memory is O(G*T*k), independent of E*C. The plan holds the decision only: losses and what a
// policy's backward needs live in the RoutingRecord (moe/routing.h).
#pragma once

#include <cstdint>
#include <vector>

namespace sparsemoe {

struct RoutingPlan {
  int64_t G = 0, T = 0, E = 0;
  int64_t C = 0;  // capacity; with dropless routing, the largest number of rows any (g, e) got
  // Many processes: these G groups are groups [group_offset, group_offset + G) of global_groups
  // (0: G). Dropout counters and loss normalisers use the global numbers.
  int64_t group_offset = 0, global_groups = 0;

  std::vector<int64_t> expert_offsets;  // [E+1] rows of expert e: [offsets[e], offsets[e+1])
  std::vector<int32_t> row_token;       // [R] flat token index g*T + t
  std::vector<int32_t> row_slot;        // [R] slot c within the (g, e) buffer
  std::vector<float> row_weight;        // [R] combine weight (the router probability)
  std::vector<int32_t> row_expert;      // [R] expert e of row r
  std::vector<int64_t> token_offsets;   // [G*T+1] rows of token n: token_rows[offsets[n]...]
  std::vector<int32_t> token_rows;      // [R]

  int64_t rows() const { return static_cast<int64_t>(row_token.size()); }
  int64_t total_groups() const { return global_groups > 0 ? global_groups : G; }
  int64_t row_group(int64_t r) const { return row_token[r] / T; }
  // Counter base used for dropout of row r so that the sparse path and the masked reference
  // path draw identical masks: the row's position in a dense [G, E, C] buffer.
  uint64_t dense_slot_id(int64_t expert, int64_t r) const {
    return static_cast<uint64_t>(((group_offset + row_group(r)) * E + expert) * C + row_slot[r]);
  }

  // Lays rows out expert-major from the row count of each (g, e) block, load [G, E]: sets
  // expert_offsets, sizes the row arrays, and returns where each block starts, [G, E].
  std::vector<int64_t> layout_blocks(const std::vector<int64_t>& load);

  // Rebuilds row_expert and token_offsets/token_rows from the rows (a token's rows in expert
  // order).
  void build_token_index();

  // Dense [G,T,E,C] masks exactly as the reference sources' routers return them.
  void to_dense(float* dispatch, float* combine) const;
};

}  // namespace sparsemoe
