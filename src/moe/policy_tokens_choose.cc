// Tokens-choose top-k routing (flaxformer TokensChooseMaskedRouter, spec §6) with the Switch
// load-balancing loss (spec §5.1): each token picks its top-k experts (ties to the lower index);
// all first choices are placed before any second choice, in token order or, with batch-prioritized
// routing, by descending top-1 probability; choices past capacity are dropped (dropless: none);
// the combine weight is the raw probability. Capacity round(cf*T/E), or unlimited when dropless.
#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "policies.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

namespace {

struct Choice {
  int32_t token;  // t within the group
  int32_t expert;
  int32_t slot;
};

class TokensChoose final : public RoutingPolicy {
 public:
  TokensChoose(int64_t k, bool batch_prioritized) : k_(k), bpr_(batch_prioritized) {}

  void validate(const RouterConfig& c) const override { check_top2_only_options(c); }

  int64_t capacity(const CapacityRule& rule, int64_t T, int64_t E) const override {
    return rule.dropless ? -1
                         : expert_capacity(rule.capacity_factor, T, E, rule.min_expert_capacity);
  }

  void route(const RouteArgs& a, RoutingPlan& plan, PolicySaved& saved) const override {
    const int64_t G = a.G, T = a.T, E = a.E, C = a.C, k = k_;
    check_arg(k >= 1 && k <= E, "tokens_choose: k (num_selected_experts) must lie in [1, E=" +
                                    std::to_string(E) + "], got " + std::to_string(k));
    const bool dropless = C < 0;
    plan.G = G, plan.T = T, plan.E = E;
    saved = {};
    saved.density.assign(G * E, 0.f);
    std::vector<std::vector<Choice>> kept(G);  // per group, kept choices
    std::vector<int64_t> load(G * E, 0);       // [G, E] kept rows
    std::vector<double> group_aux(G, 0.0);

    parallel_for(G, [&](int64_t g) {
      const float* p = a.probs + g * T * E;
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
      float* density = saved.density.data() + g * E;
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
      if (bpr_)
        std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
          return p[x * E + top[x * k]] > p[y * E + top[y * k]];
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
    for (double x : group_aux) aux += x;
    saved.aux_loss =  // mean_{g,e} * E^2 over the global batch's groups
        aux * static_cast<double>(E) / static_cast<double>(a.total_groups());

    int64_t max_load = 0;
    for (int64_t l : load) max_load = std::max(max_load, l);
    plan.C = dropless ? max_load : C;

    const std::vector<int64_t> block_start = plan.layout_blocks(load);
    parallel_for(G, [&](int64_t g) {
      for (const Choice& c : kept[g]) {
        const int64_t row = block_start[g * E + c.expert] + c.slot;
        plan.row_token[row] = static_cast<int32_t>(g * T + c.token);
        plan.row_slot[row] = c.slot;
        plan.row_weight[row] = a.probs[(g * T + c.token) * E + c.expert];
      }
    });
    plan.build_token_index();
  }

  // d aux / d p[g,t,e] = E * density[g,e] / (G*T).
  void backward(const RoutingPlan& plan, const PolicySaved& saved, const float* dweight,
                double aux_weight, double* dprobs) const override {
    scatter_row_gradients(plan, dweight, dprobs);
    const int64_t E = plan.E, N = plan.G * plan.T;
    const double lb_scale = aux_weight * E / static_cast<double>(plan.total_groups() * plan.T);
    if (lb_scale == 0) return;
    parallel_for_range(N, 1024, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) {
        const float* density = saved.density.data() + (n / plan.T) * E;
        for (int64_t j = 0; j < E; ++j) dprobs[n * E + j] += lb_scale * density[j];
      }
    });
  }

 private:
  int64_t k_;
  bool bpr_;
};

}  // namespace

std::unique_ptr<RoutingPolicy> make_tokens_choose_policy(const RouterConfig& config) {
  return std::make_unique<TokensChoose>(config.num_selected_experts,
                                        config.batch_prioritized_routing);
}

}  // namespace sparsemoe
