// Experts-choose routing (tf-models ExpertsChooseMaskedRouter, spec §7): each (group, expert)
// takes its top-C tokens, slot c in descending probability, ties to the lower token index; the
// combine weight is the probability; no auxiliary loss; capacity round(cf*T/E), at most T.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "policies.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

void scatter_row_gradients(const RoutingPlan& plan, const float* dweight, double* dprobs) {
  const int64_t E = plan.E;
  std::memset(dprobs, 0, static_cast<size_t>(plan.G * plan.T * E) * sizeof(double));
  for (int64_t r = 0; r < plan.rows(); ++r)
    dprobs[static_cast<int64_t>(plan.row_token[r]) * E + plan.row_expert[r]] = dweight[r];
}

namespace {

class ExpertsChoose final : public RoutingPolicy {
 public:
  void validate(const RouterConfig& c) const override {
    if (c.num_selected_experts != 1)
      throw ConfigError(
          "RouterConfig: num_selected_experts applies to tokens_choose only (experts_choose takes "
          "top-C tokens)");
    check_top2_only_options(c);
  }

  int64_t capacity(const CapacityRule& rule, int64_t T, int64_t E) const override {
    check_arg(!rule.dropless,
              "dropless routing is defined for tokens_choose only; experts_choose always fills "
              "exactly C slots per expert");
    const int64_t C = expert_capacity(rule.capacity_factor, T, E, rule.min_expert_capacity);
    check_arg(C <= T, "experts_choose: expert capacity C=" + std::to_string(C) +
                          " exceeds tokens_per_group T=" + std::to_string(T) +
                          " (lower the capacity factor or min_expert_capacity)");
    return C;
  }

  void route(const RouteArgs& a, RoutingPlan& plan, PolicySaved& saved) const override {
    const int64_t G = a.G, T = a.T, E = a.E, C = a.C;
    check_arg(C >= 0 && C <= T, "experts_choose: expert capacity C=" + std::to_string(C) +
                                    " exceeds tokens_per_group T=" + std::to_string(T) +
                                    " or is negative (experts_choose fills exactly C slots)");
    saved = {};
    plan.G = G, plan.T = T, plan.E = E, plan.C = C;
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
      const float* p = a.probs + g * T * E + e;
      std::partial_sort(idx.begin(), idx.begin() + C, idx.end(), [&](int32_t x, int32_t y) {
        const float px = p[x * E], py = p[y * E];
        return px > py || (px == py && x < y);
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

  void backward(const RoutingPlan& plan, const PolicySaved&, const float* dweight, double,
                double* dprobs) const override {
    scatter_row_gradients(plan, dweight, dprobs);
  }
};

}  // namespace

std::unique_ptr<RoutingPolicy> make_experts_choose_policy() {
  return std::make_unique<ExpertsChoose>();
}

}  // namespace sparsemoe
