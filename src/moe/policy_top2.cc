// lingvo's Top-2 gating (Top2GatingOnLogits, spec §8): the first expert by argmax, the second by
// one of three policies (all / sampling / random), lingvo's capacity rule (spec §2.5), second
// choices placed after the kept first choices, the gates renormalised before (legacy) or after
// the capacity drop, the top-1 aux loss (spec §5.2), the over-capacity summaries, paddings and
// importance; and the backward through the renormalisation and the aux loss.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "policies.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/moe/streams.h"

namespace sparsemoe {

namespace {

using moe_streams::kGumbelStream, moe_streams::kRandomStream;
constexpr float kVeryNegative = -0.7f * std::numeric_limits<float>::max();

class Top2 final : public RoutingPolicy {
 public:
  explicit Top2(const Top2Options& opt) : opt_(opt) {}

  void validate(const RouterConfig& c) const override {
    if (c.num_selected_experts != 2)
      throw ConfigError("RouterConfig: num_selected_experts: top2 always selects 2 experts, got " +
                        std::to_string(c.num_selected_experts));
  }

  int64_t capacity(const CapacityRule& rule, int64_t T, int64_t E) const override {
    check_arg(!rule.dropless,
              "dropless routing is defined for tokens_choose only; top2 uses "
              "lingvo's capacity rule");
    return lingvo_expert_capacity(rule.expert_capacity_dim, rule.capacity_factor, T, E);
  }

  bool takes_paddings() const override { return true; }
  int64_t default_k() const override { return 2; }
  bool reports_over_capacity() const override { return true; }
  bool draws_with_key() const override { return true; }

  void route(const RouteArgs& a, RoutingPlan& plan, PolicySaved& saved) const override {
    const float* probs = a.probs;
    const float* logits = a.logits;
    const float* paddings = a.paddings;
    const float* importance = a.importance;
    const int64_t G = a.G, S = a.T, E = a.E, C = a.C;
    const bool sample = a.sample;
    const uint64_t key = a.key;
    check_arg(C >= 0, "top2: expert capacity must be >= 0, got " + std::to_string(C));
    const bool sampling = sample && opt_.second_expert_policy == SecondExpertPolicy::kSampling;
    const bool random = sample && opt_.second_expert_policy == SecondExpertPolicy::kRandom;
    const float threshold = static_cast<float>(std::max(opt_.second_expert_threshold, 1e-9));
    const uint64_t gumbel_key = derive_key(key, kGumbelStream),
                   random_key = derive_key(key, kRandomStream);
    const int64_t n0 = a.group_offset * S;  // the global index of this call's first token
    saved = {};
    saved.top2.assign(G * S, {});
    saved.density.assign(G * E, 0.f);
    saved.denom.assign(G, 1.f);
    std::vector<double> group_aux(G, 0.0);
    std::vector<int64_t> over1(G, 0), over2(G, 0), sum1(G, 0), sum2(G, 0), valid(G, 0);
    std::vector<int64_t> load(G * E, 0);  // [G, E] rows kept (nonzero gate)
    struct Row {
      int32_t token, expert, slot;
      float weight;
    };
    std::vector<std::vector<Row>> rows(G);

    parallel_for(G, [&](int64_t g) {
      std::vector<float> imp(S);
      std::vector<uint8_t> m1(S), m2(S);
      double imp_sum = 0;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t n = g * S + s;
        imp[s] = importance ? importance[n] : (paddings ? 1.f - paddings[n] : 1.f);
        imp_sum += imp[s];
        m1[s] = imp[s] == 1.f;
        m2[s] = imp[s] > 0.f;
        valid[g] += paddings ? paddings[n] == 0.f : 1;
      }
      if (!opt_.legacy_mtf_behavior) saved.denom[g] = static_cast<float>(imp_sum / S + 1e-6);
      const float denom = saved.denom[g];

      // Choices and gates.
      float* density = saved.density.data() + g * E;
      std::vector<double> proxy(E, 0.0);
      for (int64_t s = 0; s < S; ++s) {
        const int64_t n = g * S + s;
        const float* raw = probs + n * E;
        Top2Choice& tk = saved.top2[n];
        int32_t i1 = 0;
        for (int32_t e = 1; e < E; ++e)
          if (raw[e] > raw[i1]) i1 = e;  // ties: the lower index
        tk.e1 = i1;
        tk.live1 = m1[s];
        tk.p1 = tk.live1 ? raw[i1] : 0.f;
        if (m1[s]) {
          density[i1] += 1.f;
          for (int64_t e = 0; e < E; ++e) proxy[e] += raw[e];
        }
        // rest = raw * (1 - mask1): the first expert is excluded only for tokens it was given to.
        auto rest = [&](int32_t e) { return m1[s] && e == i1 ? 0.f : raw[e]; };
        int32_t i2 = 0;
        if (sampling) {
          float best = 0;
          for (int32_t e = 0; e < E; ++e) {
            const float u = uniform01(gumbel_key, static_cast<uint64_t>((n0 + n) * E + e));
            const float gumbel = -std::log(-std::log(u + 0.5f / 16777216.f));
            const float v = (m1[s] && e == i1 ? kVeryNegative : logits[n * E + e]) + gumbel;
            if (e == 0 || v > best) best = v, i2 = e;
          }
        } else {
          for (int32_t e = 1; e < E; ++e)
            if (rest(e) > rest(i2)) i2 = e;
        }
        tk.e2 = i2;
        tk.live2 = m2[s] && !(m1[s] && i2 == i1);
        tk.p2 = tk.live2 ? raw[i2] : 0.f;
      }
      double aux = 0;
      for (int64_t e = 0; e < E; ++e) {
        density[e] /= static_cast<float>(S) * denom;
        aux += static_cast<double>(density[e]) * (proxy[e] / S / denom);
      }
      group_aux[g] = aux;

      // First choices in token order, then second choices after the kept first choices.
      std::vector<int64_t> count(E, 0);
      auto& out = rows[g];
      out.clear();
      std::vector<int64_t> pos1(S, 0), pos2(S, 0);
      for (int64_t s = 0; s < S; ++s) {
        if (!m1[s]) continue;
        Top2Choice& tk = saved.top2[g * S + s];
        pos1[s] = count[tk.e1]++;
        ++sum1[g];
        if (pos1[s] >= C) ++over1[g];
        tk.kept1 = pos1[s] < C;
      }
      std::vector<int64_t> count1(E, 0);
      for (int64_t s = 0; s < S; ++s)
        if (saved.top2[g * S + s].kept1) ++count1[saved.top2[g * S + s].e1];
      std::vector<int64_t> count2(E, 0);
      for (int64_t s = 0; s < S; ++s) {
        if (!m2[s]) continue;
        const int64_t n = g * S + s;
        Top2Choice& tk = saved.top2[n];
        if (random) {
          // lingvo compares with the gate as it is at this point: normalised when legacy.
          const float g2 = opt_.legacy_mtf_behavior ? tk.p2 / (tk.p1 + tk.p2 + 1e-9f) : tk.p2;
          if (!(uniform01(random_key, static_cast<uint64_t>(n0 + n)) < g2 / threshold)) continue;
        }
        pos2[s] = count2[tk.e2]++ + count1[tk.e2];
        ++sum2[g];
        if (pos2[s] >= C) ++over2[g];
        tk.kept2 = pos2[s] < C;
      }
      for (int64_t s = 0; s < S; ++s) {
        const int64_t n = g * S + s;
        const Top2Choice& tk = saved.top2[n];
        float w1, w2;
        if (opt_.legacy_mtf_behavior) {
          const float d = tk.p1 + tk.p2 + 1e-9f;
          w1 = tk.kept1 ? tk.p1 / d : 0.f;
          w2 = tk.kept2 ? tk.p2 / d : 0.f;
        } else {
          const float a = tk.kept1 ? tk.p1 : 0.f, b = tk.kept2 ? tk.p2 : 0.f;
          const float d = a + b > 0.f ? a + b : 1.f;
          w1 = a / d;
          w2 = b / d;
        }
        // dispatch = (combine != 0): a zero gate keeps its slot but is not dispatched.
        if (w1 != 0.f)
          out.push_back({static_cast<int32_t>(s), tk.e1, static_cast<int32_t>(pos1[s]), w1});
        if (w2 != 0.f)
          out.push_back({static_cast<int32_t>(s), tk.e2, static_cast<int32_t>(pos2[s]), w2});
      }
      for (const Row& r : out) ++load[g * E + r.expert];
    });

    // The summaries sum over all groups. lingvo counts mask * position >= C over every (g, s, e),
    // so with C == 0 every element counts.
    int64_t o1 = 0, o2 = 0, s1 = 0, s2 = 0;
    saved.valid_tokens = 0;
    double aux = 0;
    for (int64_t g = 0; g < G; ++g) {
      o1 += over1[g], o2 += over2[g], s1 += sum1[g], s2 += sum2[g];
      saved.valid_tokens += valid[g];
      aux += group_aux[g];
    }
    if (C == 0) o1 = o2 = G * S * E;
    saved.over_capacity_1_ratio =
        static_cast<double>(o1) / static_cast<double>(std::max<int64_t>(1, s1));
    saved.over_capacity_2_ratio =
        static_cast<double>(o2) / static_cast<double>(std::max<int64_t>(1, s2));
    saved.aux_loss =  // mean_{g,e} * E^2 over the global batch's groups
        aux * static_cast<double>(E) / static_cast<double>(a.total_groups());

    plan.G = G, plan.T = S, plan.E = E, plan.C = C;
    // Within a (g, e) block rows go in slot order (slots may have gaps: zero gates keep theirs).
    std::vector<int64_t> fill = plan.layout_blocks(load);
    for (int64_t g = 0; g < G; ++g) {
      std::vector<const Row*> sorted;
      for (const Row& row : rows[g]) sorted.push_back(&row);
      std::stable_sort(sorted.begin(), sorted.end(),
                       [](const Row* a, const Row* b) { return a->slot < b->slot; });
      for (const Row* row : sorted) {
        const int64_t at = fill[g * E + row->expert]++;
        plan.row_token[at] = static_cast<int32_t>(g * S + row->token);
        plan.row_slot[at] = row->slot;
        plan.row_weight[at] = row->weight;
      }
    }
    plan.build_token_index();
  }

  void backward(const RoutingPlan& plan, const PolicySaved& saved, const float* dweight,
                double aux_weight, double* dprobs) const override {
    const int64_t G = plan.G, S = plan.T, E = plan.E, G_all = plan.total_groups();
    const bool legacy = opt_.legacy_mtf_behavior;
    // d aux / d raw[g,s,e] = E/G * density1[g,e] * live1[g,s] / (S * denom[g]).
    parallel_for_range(G * S, 256, [&](int64_t b, int64_t end) {
      std::vector<float> dp(E);
      for (int64_t n = b; n < end; ++n) {
        const int64_t g = n / S;
        const Top2Choice& tk = saved.top2[n];
        const double aux_scale =
            tk.live1 ? aux_weight * E / (static_cast<double>(G_all) * S * saved.denom[g]) : 0.0;
        for (int64_t e = 0; e < E; ++e)
          dp[e] = static_cast<float>(aux_scale * saved.density[g * E + e]);
        // The gradient of each kept choice's combine weight: its row's, 0 when it has no row.
        double dw1 = 0, dw2 = 0;
        for (int64_t i = plan.token_offsets[n]; i < plan.token_offsets[n + 1]; ++i) {
          const int64_t r = plan.token_rows[i];
          if (tk.kept1 && plan.row_expert[r] == tk.e1) dw1 = dweight[r];
          if (tk.kept2 && plan.row_expert[r] == tk.e2) dw2 = dweight[r];
        }
        const double p1 = tk.p1, p2 = tk.p2;
        double dp1 = 0, dp2 = 0;
        if (legacy) {
          // w1 = k1 p1 / d, w2 = k2 p2 / d with d = p1 + p2 + 1e-9 (before the drop).
          const double d = static_cast<double>(tk.p1 + tk.p2 + 1e-9f), d2 = d * d;
          dp1 = dw1 * (d - p1) / d2 - dw2 * p2 / d2;
          dp2 = -dw1 * p1 / d2 + dw2 * (d - p2) / d2;
        } else {
          // a = k1 p1, b = k2 p2, w1 = a / (a + b), w2 = b / (a + b).
          const double x = tk.kept1 ? p1 : 0.0, y = tk.kept2 ? p2 : 0.0, d = x + y;
          if (d > 0) {
            const double dx = y * (dw1 - dw2) / (d * d), dy = x * (dw2 - dw1) / (d * d);
            dp1 = tk.kept1 ? dx : 0.0;
            dp2 = tk.kept2 ? dy : 0.0;
          }
        }
        // p1, p2 are probs[e1], probs[e2] where their masks allowed them (else constant 0).
        if (tk.live1) dp[tk.e1] += static_cast<float>(dp1);
        if (tk.live2) dp[tk.e2] += static_cast<float>(dp2);
        for (int64_t e = 0; e < E; ++e) dprobs[n * E + e] = dp[e];
      }
    });
  }

 private:
  Top2Options opt_;
};

}  // namespace

std::unique_ptr<RoutingPolicy> make_top2_policy(const RouterConfig& config) {
  return std::make_unique<Top2>(config.top2);
}

}  // namespace sparsemoe
