// Routers: experts-choose slot order and ties, tokens-choose priority / BPR / capacity drops /
// dropless, metrics, and the plan's dense form.
#include <gtest/gtest.h>

#include <set>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/kernels.h"
#include "sparsemoe/routing/routers.h"
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
  RoutingPlan plan;
  route_experts_choose(p.data(), 1, 5, 2, 3, plan);
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
  EXPECT_EQ(plan.aux_loss, 0.0);
  const RoutingStats st = routing_stats(plan);
  EXPECT_DOUBLE_EQ(st.expert_usage, 1.0);
  EXPECT_DOUBLE_EQ(st.fraction_tokens_left_behind, 0.0);  // token 1 in both, all 5 covered
  EXPECT_THROW(route_experts_choose(p.data(), 1, 5, 2, 6, plan), InvalidArgument);
}

TEST(TokensChoose, FirstChoicesBeforeSecondAndCapacityDrops) {
  const int64_t G = 3, T = 16, E = 4, C = 3, k = 2;
  const auto p = random_probs(G * T, E, 11);
  for (bool bpr : {false, true}) {
    RoutingPlan plan;
    route_tokens_choose(p.data(), G, T, E, C, k, bpr, plan);
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
  RoutingPlan plan;
  route_tokens_choose(p.data(), G, T, E, -1, k, true, plan);
  EXPECT_EQ(plan.rows(), G * T * k);
  EXPECT_DOUBLE_EQ(routing_stats(plan).fraction_tokens_left_behind, 0.0);
  route_tokens_choose(p.data(), G, T, E, 0, k, true, plan);
  EXPECT_EQ(plan.rows(), 0);
  EXPECT_DOUBLE_EQ(routing_stats(plan).fraction_tokens_left_behind, 1.0);
  EXPECT_DOUBLE_EQ(routing_stats(plan).router_confidence, 0.0);  // 0/0 reported as 0
  route_tokens_choose(p.data(), G, T, E, 2 * T, k, true, plan);  // C > T is legal
  EXPECT_EQ(plan.rows(), G * T * k);
  EXPECT_THROW(route_tokens_choose(p.data(), G, T, E, 4, E + 1, true, plan), InvalidArgument);
}

TEST(TokensChoose, UniformTop1AuxLossIsOne) {
  // Each token prefers a different expert in turn with identical margins: density = proxy = 1/E.
  const int64_t T = 8, E = 4;
  std::vector<float> p(T * E, 0.2f);
  for (int64_t t = 0; t < T; ++t) p[t * E + t % E] = 0.4f;
  RoutingPlan plan;
  route_tokens_choose(p.data(), 1, T, E, T, 1, false, plan);
  EXPECT_NEAR(plan.aux_loss, 1.0, 1e-6);
}

TEST(RoutingPlan, DenseFormMatchesRows) {
  const int64_t G = 2, T = 6, E = 3, C = 2;
  const auto p = random_probs(G * T, E, 9);
  RoutingPlan plan;
  route_tokens_choose(p.data(), G, T, E, C, 2, false, plan);
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
