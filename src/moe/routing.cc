// route_logits and its backward, the router config, the policy factory and the capacity and
// grouping rules shared by the policies (see routing.h).
#include "sparsemoe/moe/routing.h"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <limits>

#include "policies.h"
#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

namespace {
constexpr float kVeryNegative = -0.7f * std::numeric_limits<float>::max();
}

std::unique_ptr<RoutingPolicy> make_policy(const RouterConfig& config) {
  switch (config.type) {
    case RouterType::kExpertsChoose:
      return make_experts_choose_policy();
    case RouterType::kTokensChoose:
      return make_tokens_choose_policy(config);
    case RouterType::kTop2:
      return make_top2_policy(config);
  }
  throw ConfigError("router type: unknown");
}

void RouterConfig::after_read(const nlohmann::json& j) {
  if (!j.contains("num_selected_experts")) {
    RouterConfig kind;
    kind.type = type;
    num_selected_experts = make_policy(kind)->default_k();
  }
}

RouterConfig RouterConfig::from_json(const nlohmann::json& j) {
  RouterConfig c;
  config_read(j, "RouterConfig", c);
  c.validate();
  return c;
}

void RouterConfig::validate() const {
  check_fields(*this, "RouterConfig");
  auto bad = [](const std::string& m) { throw ConfigError("RouterConfig: " + m); };
  if (num_selected_experts > num_experts)
    bad("num_selected_experts: expected in [1, num_experts=" + std::to_string(num_experts) +
        "], got " + std::to_string(num_selected_experts));
  for (int64_t e : top2.expert_padding_idx)
    if (e >= num_experts)
      bad("expert_padding_idx: expected entries in [0, num_experts=" + std::to_string(num_experts) +
          "), got " + std::to_string(e));
  make_policy(*this)->validate(*this);
}

void check_top2_only_options(const RouterConfig& c) {
  const RouterConfig d;
  const Top2Options& o = c.top2;
  for (auto [key, set] :
       {std::pair{"second_expert_policy", o.second_expert_policy != d.top2.second_expert_policy},
        std::pair{"second_expert_threshold",
                  o.second_expert_threshold != d.top2.second_expert_threshold},
        std::pair{"legacy_mtf_behavior", o.legacy_mtf_behavior != d.top2.legacy_mtf_behavior},
        std::pair{"expert_padding_idx", !o.expert_padding_idx.empty()},
        std::pair{"local_dispatch", c.local_dispatch != d.local_dispatch},
        std::pair{"sample_in_eval", c.sample_in_eval != d.sample_in_eval}})
    if (set)
      throw ConfigError(std::string("RouterConfig: ") + key +
                        " applies to router type 'top2' only");
}

RouteResult plan_metrics(const RoutingPlan& plan, int64_t valid_tokens) {
  RouteResult s;
  const int64_t n = plan.G * plan.T, R = plan.rows();
  int64_t dispatched = 0;
  for (int64_t i = 0; i < n; ++i) dispatched += plan.token_offsets[i + 1] > plan.token_offsets[i];
  double weight_sum = 0;
  for (int64_t r = 0; r < R; ++r) weight_sum += plan.row_weight[r];
  // Padding tokens are never dispatched and do not count as left behind; 0/0 reports 0.
  const int64_t valid = valid_tokens < 0 ? n : valid_tokens;
  s.fraction_tokens_left_behind = valid ? 1.0 - static_cast<double>(dispatched) / valid : 0.0;
  s.router_confidence = R ? weight_sum / R : 0.0;
  const double slots = static_cast<double>(plan.E * plan.C * plan.G);
  s.expert_usage = slots > 0 ? R / slots : 0.0;
  s.tokens_per_expert.resize(plan.E);
  for (int64_t e = 0; e < plan.E; ++e)
    s.tokens_per_expert[e] = plan.expert_offsets[e + 1] - plan.expert_offsets[e];
  return s;
}

RouteResult route_logits(const RoutingPolicy& policy, const RouterConfig& config,
                         const float* logits, int64_t G, int64_t T, int64_t C,
                         const float* paddings, bool training, uint64_t key, RoutingRecord& rec,
                         int64_t group_offset, int64_t global_groups) {
  const int64_t E = config.num_experts, N = G * T;
  check_arg(paddings == nullptr || policy.takes_paddings(),
            "paddings: supported by router type 'top2' only, the router is '" +
                router_type_name(config.type) + "'");
  rec.G = G, rec.T = T, rec.E = E;
  rec.logits.resize({N, E});
  if (rec.logits.data() != logits) std::memcpy(rec.logits.data(), logits, N * E * sizeof(float));
  rec.probs.resize({N, E});
  rec.lse.resize({N});
  // Experts in expert_padding_idx get no tokens: the gate softmaxes a masked copy, while the
  // z-loss keeps the router's real logits.
  const std::vector<int64_t>& padded = config.top2.expert_padding_idx;
  const bool masked = !padded.empty();
  if (masked) rec.gate_logits.resize({N, E});
  const float* lg = rec.logits.data();
  float* gl = masked ? rec.gate_logits.data() : rec.logits.data();
  float* pr = rec.probs.data();
  float* ls = rec.lse.data();
  parallel_for_range(N, 1024, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      ls[n] = logsumexp(lg + n * E, E);
      float m = ls[n];
      if (masked) {
        std::copy(lg + n * E, lg + (n + 1) * E, gl + n * E);
        for (int64_t p : padded) gl[n * E + p] = kVeryNegative;
        m = logsumexp(gl + n * E, E);
      }
      for (int64_t j = 0; j < E; ++j) pr[n * E + j] = std::exp(gl[n * E + j] - m);
    }
  });
  for (int64_t i = 0; paddings && i < N; ++i)
    check_arg(paddings[i] == 0.f || paddings[i] == 1.f, "paddings: expected 0 or 1 at token " +
                                                            std::to_string(i) + ", got " +
                                                            std::to_string(paddings[i]));
  RouteArgs a;
  a.probs = pr, a.logits = gl, a.paddings = paddings;
  a.G = G, a.T = T, a.E = E, a.C = C;
  a.sample = training || config.sample_in_eval;
  a.key = key;
  a.group_offset = group_offset, a.global_groups = global_groups;
  policy.route(a, rec.plan, rec.saved);
  rec.plan.group_offset = group_offset, rec.plan.global_groups = global_groups;

  RouteResult out = plan_metrics(rec.plan, rec.saved.valid_tokens);
  double z = 0;
  for (int64_t n = 0; n < N; ++n) z += static_cast<double>(ls[n]) * ls[n];
  // The mean over the global batch: this process's share of it when the batch is split.
  const double n_global = static_cast<double>(a.total_groups() * T);
  out.unscaled_router_z_loss = N ? z / n_global : 0.0;
  out.router_z_loss = config.router_z_loss_weight * out.unscaled_router_z_loss;
  out.load_balancing_loss = rec.saved.aux_loss;
  out.over_capacity_1_ratio = rec.saved.over_capacity_1_ratio;
  out.over_capacity_2_ratio = rec.saved.over_capacity_2_ratio;
  out.loss = config.load_balancing_loss_weight * out.load_balancing_loss + out.router_z_loss;
  return out;
}

void route_logits_backward(const RoutingPolicy& policy, const RouterConfig& config,
                           RoutingRecord& rec, const float* dweight, double loss_scale,
                           float* dlogits) {
  const int64_t E = rec.E, N = rec.G * rec.T;
  const int64_t n_global = rec.plan.total_groups() * rec.T;
  rec.dprobs.resize(N * E);
  policy.backward(rec.plan, rec.saved, dweight, config.load_balancing_loss_weight * loss_scale,
                  rec.dprobs.data());
  // Through the softmax, then the z-loss term d z / d logit[n,e] = 2/N * lse[n] *
  // softmax(logits)[n,e] (the real logits: with padded experts, not the gate's probs).
  const double z_scale =
      config.router_z_loss_weight * loss_scale * 2.0 / static_cast<double>(n_global);
  const float* pr = rec.probs.data();
  const float* lg = rec.logits.data();
  const float* ls = rec.lse.data();
  const double* dprobs = rec.dprobs.data();
  parallel_for_range(N, 1024, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const double* dp = dprobs + n * E;
      double dot = 0;
      for (int64_t j = 0; j < E; ++j) dot += dp[j] * pr[n * E + j];
      for (int64_t j = 0; j < E; ++j) {
        const double p = pr[n * E + j];
        const double pz = z_scale != 0 ? std::exp(static_cast<double>(lg[n * E + j]) - ls[n]) : 0;
        dlogits[n * E + j] = static_cast<float>(p * (dp[j] - dot) + z_scale * ls[n] * pz);
      }
    }
  });
}

int64_t round_half_even(double x) {
  // nearbyint honours the current rounding mode; to-nearest-even is the default, but be explicit.
  const int saved = std::fegetround();
  std::fesetround(FE_TONEAREST);
  const double r = std::nearbyint(x);
  std::fesetround(saved);
  return static_cast<int64_t>(r);
}

namespace {
void check_capacity(double c, double capacity_factor, int64_t T, int64_t E) {
  check_arg(c <= static_cast<double>(kMaxExpertCapacity),
            "capacity_factor: " + nlohmann::json(capacity_factor).dump() +
                " gives an expert capacity of " + nlohmann::json(c).dump() + " for " +
                std::to_string(T) + " tokens and " + std::to_string(E) +
                " experts; expected at most 2147483644");
}
}  // namespace

int64_t expert_capacity(double capacity_factor, int64_t tokens_per_group, int64_t num_experts,
                        int64_t min_capacity) {
  check_arg(capacity_factor >= 0 && std::isfinite(capacity_factor),
            "capacity_factor: expected a finite number >= 0, got " +
                nlohmann::json(capacity_factor).dump());
  check_arg(num_experts >= 1, "num_experts: expected >= 1, got " + std::to_string(num_experts));
  const double x =
      capacity_factor * static_cast<double>(tokens_per_group) / static_cast<double>(num_experts);
  check_capacity(x, capacity_factor, tokens_per_group, num_experts);
  const int64_t c = round_half_even(x);
  return c < min_capacity ? min_capacity : c;
}

int64_t lingvo_expert_capacity(int64_t expert_capacity_dim, double capacity_factor, int64_t S,
                               int64_t E) {
  check_arg(expert_capacity_dim >= 0,
            "expert_capacity_dim: expected >= 0, got " + std::to_string(expert_capacity_dim));
  check_arg(E >= 1, "num_experts: expected >= 1, got " + std::to_string(E));
  check_arg(
      !std::isnan(capacity_factor) && !std::isinf(capacity_factor),
      "capacity_factor: expected a finite number, got " + nlohmann::json(capacity_factor).dump());
  if (!(capacity_factor > 0)) return expert_capacity_dim;
  const double x = static_cast<double>(S) * capacity_factor / static_cast<double>(E);
  check_capacity(x, capacity_factor, S, E);
  int64_t autoc = static_cast<int64_t>(x);  // truncation, as int() does
  if (autoc == 0) autoc = 4;
  if (expert_capacity_dim >= autoc) return expert_capacity_dim;
  return (autoc + 3) / 4 * 4;
}

Grouping compute_grouping(int64_t batch, int64_t length, double examples_per_group) {
  check_arg(batch >= 1 && length >= 1, "MoeLayer input: batch and length must be >= 1, got B=" +
                                           std::to_string(batch) + ", L=" + std::to_string(length));
  check_arg(examples_per_group > 0,
            "examples_per_group: expected > 0, got " + std::to_string(examples_per_group));
  check_arg(examples_per_group <= static_cast<double>(batch),
            "examples_per_group: expected <= batch size B=" + std::to_string(batch) + ", got " +
                std::to_string(examples_per_group));
  const auto tokens_per_group =
      static_cast<int64_t>(static_cast<double>(length) * examples_per_group);
  check_arg(tokens_per_group >= 1, "examples_per_group: L*examples_per_group = " +
                                       std::to_string(length * examples_per_group) +
                                       " gives fewer than 1 token per group");
  const int64_t tokens = batch * length;
  check_arg(tokens % tokens_per_group == 0,
            "examples_per_group: tokens_per_group T=" + std::to_string(tokens_per_group) +
                " must divide B*L=" + std::to_string(tokens));
  return {tokens / tokens_per_group, tokens_per_group};
}

DenseRoute route_dense(const RouterConfig& config, const float* logits, int64_t G, int64_t T,
                       const DenseRouteOptions& o) {
  const int64_t E = config.num_experts;
  check_arg(G >= 1 && T >= 1 && E >= 1, "logits: expected a non-empty [G, T, E] array, got [" +
                                            std::to_string(G) + ", " + std::to_string(T) + ", " +
                                            std::to_string(E) + "]");
  const int64_t N = checked_product({G, T, E}, "logits [G, T, E]");
  for (int64_t i = 0; i < N; ++i)
    check_arg(std::isfinite(logits[i]),
              "logits: a non-finite value at [" + std::to_string(i / (T * E)) + ", " +
                  std::to_string(i / E % T) + ", " + std::to_string(i % E) + "]");
  const auto policy = make_policy(config);
  check_arg(!o.seeded || policy->draws_with_key(),
            "seed: router '" + router_type_name(config.type) + "' draws nothing at random");
  int64_t C = o.capacity;
  if (C >= 0) {
    check_arg(C <= kMaxExpertCapacity, "capacity: expected 0 to " +
                                           std::to_string(kMaxExpertCapacity) + ", got " +
                                           std::to_string(C));
  } else {
    check_arg(o.capacity_factor >= 0 && std::isfinite(o.capacity_factor),
              "capacity_factor: expected a finite number >= 0");
    CapacityRule rule;
    rule.capacity_factor = o.capacity_factor;
    C = policy->capacity(rule, T, E);
  }
  // The answer is dense [G, T, E, C] twice: refuse one too large before allocating it.
  const int64_t cells = checked_product({G, T, E, C}, "route: dispatch [G, T, E, C]");
  if (cells > o.max_cells)
    throw InvalidArgument("route: the dense dispatch and combine [G, T, E, C] = [" +
                          std::to_string(G) + ", " + std::to_string(T) + ", " + std::to_string(E) +
                          ", " + std::to_string(C) + "] would hold " + std::to_string(cells) +
                          " values each; the limit is " + std::to_string(o.max_cells) +
                          " (fewer tokens per group or a smaller capacity)");
  RoutingRecord rec;
  DenseRoute d;
  d.result =
      route_logits(*policy, config, logits, G, T, C, o.paddings, /*training=*/true, o.seed, rec);
  d.C = rec.plan.C;
  d.dispatch.resize(G * T * E * d.C);
  d.combine.resize(G * T * E * d.C);
  rec.plan.to_dense(d.dispatch.data(), d.combine.data());
  d.reports_over_capacity = policy->reports_over_capacity();
  return d;
}

}  // namespace sparsemoe
