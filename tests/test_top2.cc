// lingvo Top-2 gating: the policies and their thresholds, reproducible sampling, paddings, the
// capacity rule inside the layer, local_dispatch, expert padding and the errors for bad options.
// The layer against the reference and finite differences, per policy: the harness's moe/top2*
// cases (sparsemoe/cases/cases.h, tests/test_harness.cc).
#include <gtest/gtest.h>

#include <cmath>

#include "moe_fixtures.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/moe/moe_layer.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::dot;
using test::random_tensor;

struct Routed {
  RoutingPlan plan;
  PolicySaved state;
  std::vector<float> probs;
  RouteResult result;
};

// lingvo's Top2GatingOnLogits through route_logits; `sample` is the training flag.
Routed route(const Tensor& logits, int64_t c_dim, const Top2Options& opt, bool sample, uint64_t key,
             const float* paddings = nullptr) {
  RouterConfig rc = test::router_config(RouterType::kTop2, logits.dim(2));
  rc.top2 = opt;
  RoutingRecord rec;
  Routed r;
  r.result = route_logits(*make_policy(rc), rc, logits.data(), logits.dim(0), logits.dim(1), c_dim,
                          paddings, sample, key, rec);
  r.plan = rec.plan;
  r.state = rec.saved;
  r.probs = rec.probs.to_vector();
  return r;
}

bool same_plan(const RoutingPlan& a, const RoutingPlan& b) {
  return a.expert_offsets == b.expert_offsets && a.row_token == b.row_token &&
         a.row_slot == b.row_slot && a.row_weight == b.row_weight;
}

Top2Options policy(SecondExpertPolicy p, double threshold) {
  Top2Options o;
  o.second_expert_policy = p;
  o.second_expert_threshold = threshold;
  return o;
}

TEST(Top2, PolicyAllIgnoresTheThreshold) {
  const Tensor logits = random_tensor({2, 16, 4}, 1, -2.f, 2.f);
  const Routed base = route(logits, 6, policy(SecondExpertPolicy::kAll, 0), true, 1);
  for (double th : {1e-12, 0.3, 1.0, 100.0})
    EXPECT_TRUE(
        same_plan(base.plan, route(logits, 6, policy(SecondExpertPolicy::kAll, th), true, 9).plan))
        << th;
}

TEST(Top2, RandomPolicyThresholdEdges) {
  const Tensor logits = random_tensor({2, 16, 4}, 2, -2.f, 2.f);
  const Routed all = route(logits, 16, policy(SecondExpertPolicy::kAll, 0), true, 1);
  // Threshold 0 (treated as 1e-9) keeps every second expert whose gate is > 0: same as 'all'.
  EXPECT_TRUE(same_plan(all.plan,
                        route(logits, 16, policy(SecondExpertPolicy::kRandom, 0.0), true, 5).plan));
  // A threshold no gate reaches keeps each second expert with probability gate2 / threshold;
  // with threshold 1e9 none survives, so every token has only its first expert.
  const Routed none = route(logits, 16, policy(SecondExpertPolicy::kRandom, 1e9), true, 5);
  EXPECT_EQ(none.plan.rows(), 32);
  for (const auto& t : none.state.top2) EXPECT_FALSE(t.kept2);
  // A threshold at or below every second gate keeps them all.
  float min_g2 = 1.f;
  for (const auto& t : all.state.top2) {
    // legacy: the draw compares the normalised gate2
    min_g2 = std::min(min_g2, t.p2 / (t.p1 + t.p2 + 1e-9f));
  }
  EXPECT_TRUE(same_plan(
      all.plan,
      route(logits, 16, policy(SecondExpertPolicy::kRandom, min_g2 * 0.999), true, 5).plan));
  // In between, some are kept and some are not, reproducibly for a key.
  const Routed mid = route(logits, 16, policy(SecondExpertPolicy::kRandom, 0.6), true, 5);
  EXPECT_GT(mid.plan.rows(), 32);
  EXPECT_LT(mid.plan.rows(), all.plan.rows());
  EXPECT_TRUE(same_plan(mid.plan,
                        route(logits, 16, policy(SecondExpertPolicy::kRandom, 0.6), true, 5).plan));
  // Evaluation never samples: the random policy then acts as 'all'.
  EXPECT_TRUE(same_plan(
      all.plan, route(logits, 16, policy(SecondExpertPolicy::kRandom, 0.6), false, 5).plan));
}

TEST(Top2, SamplingIsReproducibleAndExcludesTheFirstExpert) {
  const Tensor logits = random_tensor({1, 64, 6}, 3, -1.f, 1.f);
  const Top2Options opt = policy(SecondExpertPolicy::kSampling, 0);
  const Routed a = route(logits, 64, opt, true, 11), b = route(logits, 64, opt, true, 11);
  EXPECT_TRUE(same_plan(a.plan, b.plan));
  const Routed c = route(logits, 64, opt, true, 12);
  EXPECT_FALSE(same_plan(a.plan, c.plan)) << "another key should draw other second experts";
  const Routed greedy = route(logits, 64, policy(SecondExpertPolicy::kAll, 0), true, 11);
  int differs = 0;
  for (size_t n = 0; n < a.state.top2.size(); ++n) {
    EXPECT_NE(a.state.top2[n].e1, a.state.top2[n].e2);
    EXPECT_EQ(a.state.top2[n].e1, greedy.state.top2[n].e1);
    differs += a.state.top2[n].e2 != greedy.state.top2[n].e2;
  }
  EXPECT_GT(differs, 0) << "sampling never left the greedy choice";
  EXPECT_TRUE(same_plan(greedy.plan, route(logits, 64, opt, false, 11).plan));
}

TEST(Top2, PaddingIsNeverDispatched) {
  const Tensor logits = random_tensor({2, 12, 4}, 4, -2.f, 2.f);
  std::vector<float> pad(24);
  int64_t valid = 0;
  for (int64_t i = 0; i < 24; ++i) valid += (pad[i] = i % 3 == 1 ? 1.f : 0.f) == 0.f;
  for (bool legacy : {true, false}) {
    Top2Options opt = policy(SecondExpertPolicy::kAll, 0);
    opt.legacy_mtf_behavior = legacy;
    const Routed r = route(logits, 2, opt, true, 1, pad.data());
    for (int64_t i = 0; i < r.plan.rows(); ++i) EXPECT_EQ(pad[r.plan.row_token[i]], 0.f);
    EXPECT_EQ(r.state.valid_tokens, valid);
    const RouteResult& st = r.result;
    int64_t dispatched = 0;
    for (int64_t n = 0; n < 24; ++n)
      dispatched += r.plan.token_offsets[n + 1] > r.plan.token_offsets[n];
    EXPECT_DOUBLE_EQ(st.fraction_tokens_left_behind, 1.0 - double(dispatched) / valid);
    EXPECT_GT(st.fraction_tokens_left_behind, 0.0);  // C = 2 drops some
  }
}

TEST(Top2, ImportanceGatesFirstAndSecondChoices) {
  // lingvo's importance: a first choice needs importance 1, a second > 0; the non-legacy
  // densities are divided by mean(importance) + 1e-6.
  const Tensor logits = random_tensor({1, 6, 3}, 8, -2.f, 2.f);
  std::vector<float> probs(18);
  for (int64_t n = 0; n < 6; ++n) {
    float m = -1e30f, sum = 0;
    for (int e = 0; e < 3; ++e) m = std::max(m, logits[n * 3 + e]);
    for (int e = 0; e < 3; ++e) sum += (probs[n * 3 + e] = std::exp(logits[n * 3 + e] - m));
    for (int e = 0; e < 3; ++e) probs[n * 3 + e] /= sum;
  }
  const std::vector<float> importance = {1, 0.5f, 0, 1, 1, 0.5f};
  RouterConfig rc = test::router_config(RouterType::kTop2, 3);
  rc.top2.legacy_mtf_behavior = false;
  const test::Routed routed =
      test::route_probs(rc, probs.data(), 1, 6, 6, logits.data(), nullptr, importance.data());
  const RoutingPlan& plan = routed.plan;
  const PolicySaved& st = routed.saved;
  EXPECT_DOUBLE_EQ(st.denom[0], static_cast<float>(4.0 / 6 + 1e-6));
  for (int64_t s = 0; s < 6; ++s) {
    EXPECT_EQ(st.top2[s].kept1, importance[s] == 1.f) << s;
    EXPECT_EQ(st.top2[s].kept2, importance[s] > 0.f) << s;
  }
  // A half-important token has only its second choice, the argmax over all experts (its first
  // expert was not taken), renormalised to weight 1 (non-legacy).
  const int64_t n = 1;
  EXPECT_EQ(plan.token_offsets[n + 1] - plan.token_offsets[n], 1);
  EXPECT_EQ(st.top2[n].e2, st.top2[n].e1);
  EXPECT_FLOAT_EQ(plan.row_weight[plan.token_rows[plan.token_offsets[n]]], 1.f);
  EXPECT_EQ(plan.token_offsets[3] - plan.token_offsets[2], 0);  // importance 0: nothing
}

TEST(Top2, ZeroCapacityDropsEverythingAndCountsAllElements) {
  const Tensor logits = random_tensor({2, 5, 3}, 5);
  const Routed r = route(logits, 0, policy(SecondExpertPolicy::kAll, 0), true, 1);
  EXPECT_EQ(r.plan.rows(), 0);
  // lingvo counts mask * position >= C over every element: with C = 0 that is all G*S*E.
  EXPECT_DOUBLE_EQ(r.state.over_capacity_1_ratio, 30.0 / 10.0);
  EXPECT_DOUBLE_EQ(r.result.router_confidence, 0.0);  // 0/0 reports 0
}

TEST(Top2, ExpertPaddingIdxReceivesNothing) {
  const Tensor logits = random_tensor({1, 32, 5}, 6, -2.f, 2.f);
  Top2Options opt = policy(SecondExpertPolicy::kSampling, 0);
  opt.expert_padding_idx = {1, 3};
  const Routed r = route(logits, 32, opt, true, 3);
  for (int64_t e : {1, 3}) EXPECT_EQ(r.plan.expert_offsets[e + 1], r.plan.expert_offsets[e]);
  for (int64_t n = 0; n < 32; ++n) EXPECT_EQ(r.probs[n * 5 + 1], 0.f);
}

TEST(Top2, CapacityRule) {
  EXPECT_EQ(lingvo_expert_capacity(0, 1.25, 100, 8), 16);   // 15 -> multiple of 4
  EXPECT_EQ(lingvo_expert_capacity(0, 0.1, 10, 8), 4);      // 0 -> 4
  EXPECT_EQ(lingvo_expert_capacity(20, 1.25, 100, 8), 20);  // given capacity large enough
  EXPECT_EQ(lingvo_expert_capacity(9, 1.25, 100, 8), 16);
  EXPECT_EQ(lingvo_expert_capacity(3, 0.0, 100, 8), 3);  // no capacity factor
  EXPECT_THROW(lingvo_expert_capacity(-1, 1.0, 8, 2), InvalidArgument);
}

MoeLayerConfig top2_moe(bool legacy, SecondExpertPolicy p, int64_t c_dim, double cf = 0.0) {
  MoeLayerConfig c = test::small_moe(RouterType::kTop2, 4, 1, cf);
  c.router.use_bias = false;  // lingvo's gate
  c.router.top2.legacy_mtf_behavior = legacy;
  c.router.top2.second_expert_policy = p;
  c.router.top2.second_expert_threshold = 0.5;
  c.expert_capacity_dim = c_dim;
  c.experts.activation = "relu";
  return c;
}

TEST(Top2Layer, CapacityFollowsTheLingvoRule) {
  MoeLayer moe(top2_moe(true, SecondExpertPolicy::kAll, 0, 1.25));
  Tensor x = random_tensor({2, 10, 8}, 1), y;
  const MoeMetrics m = moe.forward(x, y, {true, 0});
  EXPECT_EQ(m.expert_capacity, lingvo_expert_capacity(0, 1.25, 10, 4));  // int(3.125)=3 -> 4
  EXPECT_EQ(m.expert_capacity, 4);
}

TEST(Top2Layer, LocalDispatchFalseEqualsOneMergedGroup) {
  MoeLayerConfig a = top2_moe(false, SecondExpertPolicy::kAll, 3);
  a.router.local_dispatch = false;  // groups of 1 example, merged
  MoeLayerConfig b = top2_moe(false, SecondExpertPolicy::kAll, 3);
  b.examples_per_group = 4;  // already one group
  MoeLayer ma(a), mb(b);
  Tensor x = random_tensor({4, 6, 8}, 2), ya, yb;
  const MoeMetrics m1 = ma.forward(x, ya, {true, 0}), m2 = mb.forward(x, yb, {true, 0});
  EXPECT_TRUE(test::bitwise_equal(ya, yb));
  EXPECT_EQ(m1.num_groups, 1);
  EXPECT_EQ(m1.tokens_per_expert, m2.tokens_per_expert);
  EXPECT_DOUBLE_EQ(m1.load_balancing_loss, m2.load_balancing_loss);
  // ... and differs from gating each group on its own.
  MoeLayerConfig c = top2_moe(false, SecondExpertPolicy::kAll, 3);
  MoeLayer mc(c);
  Tensor yc;
  EXPECT_EQ(mc.forward(x, yc, {true, 0}).num_groups, 4);
  EXPECT_FALSE(test::bitwise_equal(ya, yc));
}

TEST(Top2Layer, BadInputGivesClearErrors) {
  MoeLayer moe(top2_moe(true, SecondExpertPolicy::kAll, 3));
  Tensor x = random_tensor({2, 8, 8}, 1), y;
  Tensor wrong({2, 7});
  ForwardOptions opt;
  opt.paddings = &wrong;
  try {
    moe.forward(x, y, opt);
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("paddings"), std::string::npos) << e.what();
  }
  Tensor half({2, 8});
  half.fill(0.5f);
  opt.paddings = &half;
  EXPECT_THROW(moe.forward(x, y, opt), InvalidArgument);
  // Paddings on a router that does not take them.
  MoeLayer tc(test::small_moe(RouterType::kTokensChoose, 4, 1, 1.0));
  Tensor zeros({2, 8});
  opt.paddings = &zeros;
  EXPECT_THROW(tc.forward(x, y, opt), InvalidArgument);
  // Config errors name the key.
  auto j = top2_moe(true, SecondExpertPolicy::kAll, 3).to_json();
  j["router"]["second_expert_policy"] = "best";
  EXPECT_THROW(MoeLayerConfig::from_json(j), ConfigError);
  j = top2_moe(true, SecondExpertPolicy::kAll, 3).to_json();
  j["router"]["expert_padding_idx"] = {7};
  EXPECT_THROW(MoeLayerConfig::from_json(j), ConfigError);
  j = top2_moe(true, SecondExpertPolicy::kAll, 3).to_json();
  EXPECT_EQ(MoeLayerConfig::from_json(j).to_json(), j);  // round trip
}

}  // namespace
}  // namespace sparsemoe
