// Routers: experts-choose slot order and ties, tokens-choose priority / BPR / capacity drops /
// dropless, metrics, and the plan's dense form.
#include <gtest/gtest.h>

#include <set>

#include "moe_fixtures.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/ops/kernels.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

std::vector<float> random_probs(int64_t n, int64_t E, uint64_t seed) {
  std::vector<float> p(n * E);
  for (int64_t i = 0; i < n * E; ++i) p[i] = 3.f * uniform01(seed, i);
  softmax_rows(p.data(), n, E);
  return p;
}

TEST(ExpertsChoose, TopCTokensDescendingTiesToLowerToken) {
  // One group, 5 tokens, 2 experts; expert 0 sees a tie between tokens 1 and 3.
  std::vector<float> p = {0.1f, 0.9f, 0.6f, 0.4f, 0.3f, 0.7f, 0.6f, 0.4f, 0.8f, 0.2f};
  const RouterConfig ec = test::router_config(RouterType::kExpertsChoose, 2);
  const test::Routed routed = test::route_probs(ec, p.data(), 1, 5, 3);
  const RoutingPlan& plan = routed.plan;
  ASSERT_EQ(plan.rows(), 6);
  // Expert 0: tokens 4 (0.8), 1 (0.6), 3 (0.6, tie -> after token 1).
  EXPECT_EQ(plan.row_token[0], 4);
  EXPECT_EQ(plan.row_token[1], 1);
  EXPECT_EQ(plan.row_token[2], 3);
  EXPECT_EQ(plan.row_slot[2], 2);
  EXPECT_FLOAT_EQ(plan.row_weight[0], 0.8f);
  // Expert 1: tokens 0 (0.9), 2 (0.7), then 1 and 3 tie at 0.4 -> token 1.
  EXPECT_EQ(plan.row_token[3], 0);
  EXPECT_EQ(plan.row_token[4], 2);
  EXPECT_EQ(plan.row_token[5], 1);
  EXPECT_EQ(routed.saved.aux_loss, 0.0);
  const RouteResult st = plan_metrics(plan, -1);
  EXPECT_DOUBLE_EQ(st.expert_usage, 1.0);
  EXPECT_DOUBLE_EQ(st.fraction_tokens_left_behind, 0.0);  // token 1 in both, all 5 covered
  EXPECT_THROW(test::route_probs(ec, p.data(), 1, 5, 6), InvalidArgument);
}

TEST(TokensChoose, FirstChoicesBeforeSecondAndCapacityDrops) {
  const int64_t G = 3, T = 16, E = 4, C = 3, k = 2;
  const auto p = random_probs(G * T, E, 11);
  for (bool bpr : {false, true}) {
    const RoutingPlan plan =
        test::route_probs(test::router_config(RouterType::kTokensChoose, E, k, bpr), p.data(), G, T,
                          C)
            .plan;
    EXPECT_EQ(plan.C, C);
    std::vector<int> per_ge(G * E, 0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = plan.expert_offsets[e]; r < plan.expert_offsets[e + 1]; ++r) {
        const int64_t g = plan.row_group(r);
        per_ge[g * E + e]++;
        EXPECT_LT(plan.row_slot[r], C);
        EXPECT_FLOAT_EQ(plan.row_weight[r], p[plan.row_token[r] * E + e]);
      }
    for (int v : per_ge) EXPECT_LE(v, C);
    // Slots are dense 0..n-1 within each (g, e) and no token appears twice for one expert.
    for (int64_t e = 0; e < E; ++e) {
      std::set<std::pair<int64_t, int64_t>> seen;
      for (int64_t r = plan.expert_offsets[e]; r < plan.expert_offsets[e + 1]; ++r)
        EXPECT_TRUE(seen.insert({plan.row_group(r), plan.row_slot[r]}).second);
    }
  }
}

TEST(TokensChoose, DroplessKeepsEverythingAndZeroCapacityDropsEverything) {
  const int64_t G = 2, T = 32, E = 4, k = 2;
  const auto p = random_probs(G * T, E, 5);
  const RouterConfig tc = test::router_config(RouterType::kTokensChoose, E, k, true);
  RoutingPlan plan = test::route_probs(tc, p.data(), G, T, -1).plan;
  EXPECT_EQ(plan.rows(), G * T * k);
  EXPECT_DOUBLE_EQ(plan_metrics(plan, -1).fraction_tokens_left_behind, 0.0);
  plan = test::route_probs(tc, p.data(), G, T, 0).plan;
  EXPECT_EQ(plan.rows(), 0);
  EXPECT_DOUBLE_EQ(plan_metrics(plan, -1).fraction_tokens_left_behind, 1.0);
  EXPECT_DOUBLE_EQ(plan_metrics(plan, -1).router_confidence, 0.0);  // 0/0 reported as 0
  plan = test::route_probs(tc, p.data(), G, T, 2 * T).plan;         // C > T is legal
  EXPECT_EQ(plan.rows(), G * T * k);
  RouterConfig too_many = tc;
  too_many.num_selected_experts = E + 1;
  EXPECT_THROW(too_many.validate(), ConfigError);
  EXPECT_THROW(test::route_probs(too_many, p.data(), G, T, 4), InvalidArgument);
}

TEST(TokensChoose, UniformTop1AuxLossIsOne) {
  // Each token prefers a different expert in turn with identical margins: density = proxy = 1/E.
  const int64_t T = 8, E = 4;
  std::vector<float> p(T * E, 0.2f);
  for (int64_t t = 0; t < T; ++t) p[t * E + t % E] = 0.4f;
  const test::Routed r =
      test::route_probs(test::router_config(RouterType::kTokensChoose, E), p.data(), 1, T, T);
  EXPECT_NEAR(r.saved.aux_loss, 1.0, 1e-6);
}

TEST(RoutingPlan, DenseFormMatchesRows) {
  const int64_t G = 2, T = 6, E = 3, C = 2;
  const auto p = random_probs(G * T, E, 9);
  const RoutingPlan plan =
      test::route_probs(test::router_config(RouterType::kTokensChoose, E, 2), p.data(), G, T, C)
          .plan;
  std::vector<float> d(G * T * E * C), c(G * T * E * C);
  plan.to_dense(d.data(), c.data());
  double dsum = 0, csum = 0, wsum = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    dsum += d[i];
    csum += c[i];
    if (d[i] == 0) {
      EXPECT_EQ(c[i], 0.f);
    }
  }
  for (float w : plan.row_weight) wsum += w;
  EXPECT_EQ(dsum, plan.rows());
  EXPECT_NEAR(csum, wsum, 1e-6);
}

}  // namespace
}  // namespace sparsemoe
