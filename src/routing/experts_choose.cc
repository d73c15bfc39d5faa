// Experts-choose routing (spec §7): top-C tokens per (group, expert).
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/routing/routers.h"

namespace sparsemoe {

void route_experts_choose(const float* probs, int64_t G, int64_t T, int64_t E, int64_t C,
                          RoutingPlan& plan) {
  check_arg(C >= 0 && C <= T, "experts_choose: capacity C=" + std::to_string(C) +
                                  " must lie in [0, tokens_per_group T=" + std::to_string(T) + "]");
  plan.G = G, plan.T = T, plan.E = E, plan.C = C;
  plan.aux_loss = 0;
  plan.density.assign(G * E, 0.f);
  const int64_t R = G * E * C;
  plan.row_token.resize(R);
  plan.row_slot.resize(R);
  plan.row_weight.resize(R);
  plan.expert_offsets.resize(E + 1);
  for (int64_t e = 0; e <= E; ++e) plan.expert_offsets[e] = e * G * C;
  // Every (g, e) block is full, so its rows start at (e*G + g)*C.
  parallel_for(G * E, [&](int64_t ge) {
    const int64_t g = ge / E, e = ge % E;
    std::vector<int32_t> idx(T);
    std::iota(idx.begin(), idx.end(), 0);
    const float* p = probs + g * T * E + e;
    std::partial_sort(idx.begin(), idx.begin() + C, idx.end(), [&](int32_t a, int32_t b) {
      const float pa = p[a * E], pb = p[b * E];
      return pa > pb || (pa == pb && a < b);
    });
    const int64_t base = (e * G + g) * C;
    for (int64_t c = 0; c < C; ++c) {
      plan.row_token[base + c] = static_cast<int32_t>(g * T + idx[c]);
      plan.row_slot[base + c] = static_cast<int32_t>(c);
      plan.row_weight[base + c] = p[idx[c] * E];
    }
  });
  plan.build_token_index();
}

}  // namespace sparsemoe
