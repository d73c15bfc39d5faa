// RoutingPlan indexing, densification and metrics.
#include "sparsemoe/routing/routing_plan.h"

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
  token_offsets.assign(n + 1, 0);
  for (int64_t r = 0; r < R; ++r) ++token_offsets[row_token[r] + 1];
  for (int64_t i = 0; i < n; ++i) token_offsets[i + 1] += token_offsets[i];
  token_rows.resize(R);
  std::vector<int64_t> fill(token_offsets.begin(), token_offsets.end() - 1);
  for (int64_t r = 0; r < R; ++r) token_rows[fill[row_token[r]]++] = static_cast<int32_t>(r);
}

void RoutingPlan::to_dense(float* dispatch, float* combine) const {
  const size_t n = static_cast<size_t>(G * T * E * C);
  std::memset(dispatch, 0, n * sizeof(float));
  std::memset(combine, 0, n * sizeof(float));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = expert_offsets[e]; r < expert_offsets[e + 1]; ++r) {
      const int64_t idx = (static_cast<int64_t>(row_token[r]) * E + e) * C + row_slot[r];
      dispatch[idx] = 1.f;
      combine[idx] = row_weight[r];
    }
}

RoutingStats routing_stats(const RoutingPlan& plan) {
  RoutingStats s;
  const int64_t n = plan.G * plan.T, R = plan.rows();
  int64_t dispatched = 0;
  for (int64_t i = 0; i < n; ++i) dispatched += plan.token_offsets[i + 1] > plan.token_offsets[i];
  double weight_sum = 0;
  for (int64_t r = 0; r < R; ++r) weight_sum += plan.row_weight[r];
  // Padding tokens are never dispatched and do not count as left behind; 0/0 reports 0.
  const int64_t valid = plan.valid_tokens < 0 ? n : plan.valid_tokens;
  s.fraction_tokens_left_behind = valid ? 1.0 - static_cast<double>(dispatched) / valid : 0.0;
  s.router_confidence = R ? weight_sum / R : 0.0;
  const double slots = static_cast<double>(plan.E * plan.C * plan.G);
  s.expert_usage = slots > 0 ? R / slots : 0.0;
  s.tokens_per_expert.resize(plan.E);
  for (int64_t e = 0; e < plan.E; ++e)
    s.tokens_per_expert[e] = plan.expert_offsets[e + 1] - plan.expert_offsets[e];
  return s;
}

}  // namespace sparsemoe
