// RoutingPlan indexing and densification (see routing_plan.h).
#include "sparsemoe/moe/routing_plan.h"

#include <algorithm>
#include <cstring>

namespace sparsemoe {

std::vector<int64_t> RoutingPlan::layout_blocks(const std::vector<int64_t>& load) {
  // Block (g, e) starts after all of expert e's earlier groups.
  std::vector<int64_t> block_start(G * E);
  expert_offsets.assign(E + 1, 0);
  int64_t r = 0;
  for (int64_t e = 0; e < E; ++e) {
    expert_offsets[e] = r;
    for (int64_t g = 0; g < G; ++g) {
      block_start[g * E + e] = r;
      r += load[g * E + e];
    }
  }
  expert_offsets[E] = r;
  row_token.resize(r);
  row_slot.resize(r);
  row_weight.resize(r);
  return block_start;
}

void RoutingPlan::build_token_index() {
  const int64_t n = G * T, R = rows();
  row_expert.resize(R);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = expert_offsets[e]; r < expert_offsets[e + 1]; ++r)
      row_expert[r] = static_cast<int32_t>(e);
  token_offsets.assign(n + 1, 0);
  for (int64_t r = 0; r < R; ++r) ++token_offsets[row_token[r] + 1];
  for (int64_t i = 0; i < n; ++i) token_offsets[i + 1] += token_offsets[i];
  token_rows.resize(R);
  std::vector<int64_t> fill(token_offsets.begin(), token_offsets.end() - 1);
  for (int64_t r = 0; r < R; ++r) token_rows[fill[row_token[r]]++] = static_cast<int32_t>(r);
}

void RoutingPlan::to_dense(float* dispatch, float* combine) const {
  const size_t n = static_cast<size_t>(G * T * E * C);
  if (n == 0) return;  // C == 0: nothing to write (and the buffers may be null)
  std::memset(dispatch, 0, n * sizeof(float));
  std::memset(combine, 0, n * sizeof(float));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = expert_offsets[e]; r < expert_offsets[e + 1]; ++r) {
      const int64_t idx = (static_cast<int64_t>(row_token[r]) * E + e) * C + row_slot[r];
      dispatch[idx] = 1.f;
      combine[idx] = row_weight[r];
    }
}

}  // namespace sparsemoe
