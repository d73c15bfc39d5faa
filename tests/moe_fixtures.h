// Small MoE configurations shared by the layer and gradient tests.
#pragma once

#include <functional>

#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/moe/routing.h"
#include "test_util.h"

namespace sparsemoe::test {

inline RouterConfig router_config(RouterType type, int64_t E, int64_t k = 0, bool bpr = false) {
  RouterConfig rc;
  rc.type = type;
  rc.num_experts = E;
  rc.num_selected_experts = k > 0 ? k : make_policy(rc)->default_k();
  rc.batch_prioritized_routing = bpr;
  return rc;
}

// A routing policy's decision on given probabilities [G, T, E] (the policies' own unit tests;
// layers and tools route from logits through route_logits).
struct Routed {
  RoutingPlan plan;
  PolicySaved saved;
};
inline Routed route_probs(const RouterConfig& rc, const float* probs, int64_t G, int64_t T,
                          int64_t C, const float* logits = nullptr, const float* paddings = nullptr,
                          const float* importance = nullptr, bool sample = false,
                          uint64_t key = 0) {
  RouteArgs a;
  a.probs = probs, a.logits = logits ? logits : probs, a.paddings = paddings;
  a.importance = importance;
  a.G = G, a.T = T, a.E = rc.num_experts, a.C = C, a.sample = sample, a.key = key;
  Routed r;
  make_policy(rc)->route(a, r.plan, r.saved);
  return r;
}

inline MoeLayerConfig small_moe(RouterType type, int64_t E = 4, int64_t k = 1, double cf = 1.0,
                                int64_t H = 8, int64_t F = 12) {
  MoeLayerConfig c;
  c.hidden_size = H;
  c.experts.num_experts = E;
  c.experts.d_ff = F;
  c.experts.activation = "gelu";
  c.router.num_experts = E;
  c.router.type = type;
  c.router.num_selected_experts = type == RouterType::kTop2 ? 2 : k;
  c.train_capacity_factor = c.eval_capacity_factor = cf;
  c.seed = 1234;
  c.router.kernel_init_stddev = 0.5;  // spread-out router probabilities
  c.experts.kernel_init_stddev = 0.3;
  return c;
}

}  // namespace sparsemoe::test
