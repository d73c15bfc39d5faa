// Tokens-choose top-k routing (spec §6) with the Switch load-balancing loss (spec §5.1).
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/routing/routers.h"

namespace sparsemoe {

namespace {

struct Choice {
  int32_t token;  // t within the group
  int32_t expert;
  int32_t slot;
};

}  // namespace

void route_tokens_choose(const float* probs, int64_t G, int64_t T, int64_t E, int64_t C, int64_t k,
                         bool batch_prioritized, RoutingPlan& plan) {
  check_arg(k >= 1 && k <= E, "tokens_choose: k (num_selected_experts) must lie in [1, E=" +
                                  std::to_string(E) + "], got " + std::to_string(k));
  const bool dropless = C < 0;
  plan.G = G, plan.T = T, plan.E = E;
  plan.valid_tokens = -1;
  plan.density.assign(G * E, 0.f);
  std::vector<std::vector<Choice>> kept(G);  // per group, kept choices
  std::vector<int64_t> load(G * E, 0);       // [G, E] kept rows
  std::vector<double> group_aux(G, 0.0);

  parallel_for(G, [&](int64_t g) {
    const float* p = probs + g * T * E;
    std::vector<int32_t> top(T * k);  // [T, k] chosen experts, descending probability
    for (int64_t t = 0; t < T; ++t) {
      const float* row = p + t * E;
      for (int64_t j = 0; j < k; ++j) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; ++e) {
          bool taken = false;
          for (int64_t i = 0; i < j; ++i) taken |= top[t * k + i] == e;
          if (!taken && (best < 0 || row[e] > row[best])) best = e;  // ties: lower index
        }
        top[t * k + j] = best;
      }
    }
    // Load-balancing loss terms for this group: density (top-k mask) and proxy (mean prob).
    float* density = plan.density.data() + g * E;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j) density[top[t * k + j]] += 1.f;
    double aux = 0;
    for (int64_t e = 0; e < E; ++e) {
      density[e] /= static_cast<float>(T);
      double proxy = 0;
      for (int64_t t = 0; t < T; ++t) proxy += p[t * E + e];
      aux += density[e] * (proxy / T);
    }
    group_aux[g] = aux;

    std::vector<int32_t> order(T);
    std::iota(order.begin(), order.end(), 0);
    if (batch_prioritized)
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return p[a * E + top[a * k]] > p[b * E + top[b * k]];
      });
    std::vector<int64_t> count(E, 0);  // counts overflowed choices too, as flaxformer does
    auto& out = kept[g];
    out.clear();
    for (int64_t j = 0; j < k; ++j)
      for (int32_t t : order) {
        const int32_t e = top[t * k + j];
        const int64_t pos = count[e]++;
        if (dropless || pos < C) out.push_back({t, e, static_cast<int32_t>(pos)});
      }
    for (const Choice& c : out) ++load[g * E + c.expert];
  });

  double aux = 0;
  for (double a : group_aux) aux += a;
  plan.aux_loss = aux * static_cast<double>(E) / static_cast<double>(G);  // mean_{g,e} * E^2

  int64_t max_load = 0;
  for (int64_t l : load) max_load = std::max(max_load, l);
  plan.C = dropless ? max_load : C;

  const std::vector<int64_t> block_start = plan.layout_blocks(load);
  parallel_for(G, [&](int64_t g) {
    for (const Choice& c : kept[g]) {
      const int64_t row = block_start[g * E + c.expert] + c.slot;
      plan.row_token[row] = static_cast<int32_t>(g * T + c.token);
      plan.row_slot[row] = c.slot;
      plan.row_weight[row] = probs[(g * T + c.token) * E + c.expert];
    }
  });
  plan.build_token_index();
}

}  // namespace sparsemoe
