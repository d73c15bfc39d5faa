// Known answers from tests/data/peer_cases.json (the spec's peer cases that these tests use):
// router z-loss (TFM-Z1/Z2), FeedForward (TFM-FF1), FeedForwardExperts (TFM-FFE1), the capacity
// table (D4: tf-models, GR/flaxformer and lingvo rows), the tokens-choose worked example (D1) and
// the lingvo Top-2 worked example (D2).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe_fixtures.h"
#include "sparsemoe/moe/experts.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/nn/feed_forward.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using nlohmann::json;

const json& peer_case(const std::string& id) {
  static const json cases = [] {
    std::ifstream in(SPARSEMOE_TEST_DATA_DIR "/peer_cases.json");
    if (!in) throw std::runtime_error("cannot open " SPARSEMOE_TEST_DATA_DIR "/peer_cases.json");
    return json::parse(in)["cases"];
  }();
  for (const json& c : cases)
    if (c["id"] == id) return c;
  throw std::runtime_error("peer case not found: " + id);
}

Shape shape_of(const json& j) { return j["shape"].get<Shape>(); }

// Router z-loss of explicit logits, one token at a time through route_logits.
double z_loss_of(const std::vector<std::vector<float>>& rows) {
  const int64_t N = static_cast<int64_t>(rows.size()), E = static_cast<int64_t>(rows[0].size());
  const RouterConfig rc = test::router_config(RouterType::kTokensChoose, E);
  double total = 0;
  for (const auto& row : rows) {
    RoutingRecord rec;
    total += route_logits(*make_policy(rc), rc, row.data(), 1, 1, 1, nullptr, false, 0, rec)
                 .unscaled_router_z_loss;
  }
  return total / N;
}

TEST(PeerCases, RouterZLoss) {
  const json& z1 = peer_case("TFM-Z1");
  const auto logits =
      z1["inputs"]["router_logits"]["value"].get<std::vector<std::vector<std::vector<float>>>>();
  EXPECT_NEAR(z_loss_of(logits[0]), z1["expected"]["z_loss"].get<double>(),
              1e-5 /* the case says 1e-7; float32 spacing at 100 is 7.6e-6 */);
  const json& z2 = peer_case("TFM-Z2");
  const Shape s = shape_of(z2["inputs"]["router_logits"]);
  std::vector<std::vector<float>> rows(
      s[0] * s[1], std::vector<float>(s[2], z2["inputs"]["router_logits"]["fill"].get<float>()));
  EXPECT_NEAR(z_loss_of(rows), z2["expected"]["z_loss"].get<double>(), 1e-5);
}

TEST(PeerCases, FeedForwardAllOnes) {
  const json& c = peer_case("TFM-FF1");
  FeedForwardConfig fc;
  fc.d_ff = c["params"]["d_ff"];
  fc.activation = c["params"]["activation"];
  fc.output_dropout = c["params"]["output_dropout"];
  const Shape xs = shape_of(c["inputs"]["x"]);
  FeedForward ff(fc, xs.back());
  for (auto& p : ff.params()) p.value->fill(1.f);
  Tensor x(xs, c["inputs"]["x"]["fill"].get<float>()), y;
  ff.forward(x, y, {c["params"]["training"].get<bool>(), 0});
  EXPECT_EQ(y.shape(), shape_of(c["expected"]["y"]));
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(y[i], c["expected"]["y"]["fill"].get<float>(),
                c["tolerance"]["atol"].get<double>());
}

TEST(PeerCases, FeedForwardExpertsAllOnes) {
  const json& c = peer_case("TFM-FFE1");
  FeedForwardExpertsConfig fc;
  fc.num_experts = c["params"]["num_experts"];
  fc.d_ff = c["params"]["d_ff"];
  fc.activation = c["params"]["activation"];
  fc.output_dropout = c["params"]["output_dropout"];
  const Shape xs = shape_of(c["inputs"]["x"]);
  FeedForwardExperts ffe(fc, xs.back());
  for (auto& p : ffe.params()) p.value->fill(1.f);
  Tensor x(xs, c["inputs"]["x"]["fill"].get<float>()), y;
  ffe.forward(x, y, {c["params"]["training"].get<bool>(), 0});
  EXPECT_EQ(y.shape(), shape_of(c["expected"]["y"]));
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(y[i], c["expected"]["y"]["fill"].get<float>(),
                c["tolerance"]["atol"].get<double>());
}

TEST(PeerCases, CapacityTable) {
  const json& c = peer_case("D4");
  const auto& cases = c["inputs"]["cases"];
  const auto expected = c["expected"]["capacity"].get<std::vector<int64_t>>();
  int checked = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string src = cases[i]["src"];
    if (src == "tf-models latest") {
      EXPECT_EQ(expert_capacity(cases[i]["cf"], cases[i]["T"], cases[i]["E"]), expected[i]) << i;
      ++checked;
    } else if (src.rfind("GR/flaxformer", 0) == 0) {
      EXPECT_EQ(expert_capacity(cases[i]["cf"], cases[i]["T"], cases[i]["E"], 4), expected[i]) << i;
      ++checked;
    } else if (src == "lingvo") {
      EXPECT_EQ(
          lingvo_expert_capacity(cases[i]["c_dim"], cases[i]["cf"], cases[i]["S"], cases[i]["E"]),
          expected[i])
          << i;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 11);
}

TEST(PeerCases, LingvoTop2WorkedExampleD2) {
  const json& c = peer_case("D2");
  const auto raw = c["inputs"]["raw_gates"].get<std::vector<std::vector<std::vector<float>>>>();
  const int64_t S = c["params"]["S"], E = c["params"]["E"], C = c["params"]["expert_capacity_dim"];
  std::vector<float> logits;  // ln p, so that softmax(logits) = p
  for (const auto& row : raw[0])
    for (float p : row) logits.push_back(std::log(p));
  const double tol = c["tolerance"]["atol"];
  for (const auto& [key, legacy] :
       {std::pair{"legacy_true", true}, std::pair{"legacy_false", false}}) {
    RouterConfig rc = test::router_config(RouterType::kTop2, E);
    rc.top2.legacy_mtf_behavior = legacy;
    RoutingRecord rec;
    const RouteResult r =
        route_logits(*make_policy(rc), rc, logits.data(), 1, S, C, nullptr, false, 0, rec);
    const RoutingPlan& plan = rec.plan;
    std::vector<float> dispatch(S * E * C), combine(S * E * C);
    plan.to_dense(dispatch.data(), combine.data());
    const json& want = c["expected"][key]["combine_nonzero"];
    int nonzero = 0;
    for (int64_t t = 0; t < S; ++t)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t k = 0; k < C; ++k) {
          char buf[64];  // (snprintf: GCC 12 warns falsely on the string-concatenation form)
          std::snprintf(buf, sizeof buf, "t%lld,e%lld,c%lld", static_cast<long long>(t),
                        static_cast<long long>(e), static_cast<long long>(k));
          const std::string at = buf;
          const float got = combine[(t * E + e) * C + k];
          EXPECT_EQ(dispatch[(t * E + e) * C + k], got != 0.f ? 1.f : 0.f) << at;
          if (want.contains(at)) {
            EXPECT_NEAR(got, want[at].get<double>(), tol) << key << " " << at;
            ++nonzero;
          } else {
            EXPECT_EQ(got, 0.f) << key << " " << at;
          }
        }
    EXPECT_EQ(nonzero, static_cast<int>(want.size()));
    EXPECT_NEAR(r.load_balancing_loss, c["expected"][key]["aux_loss"].get<double>(), tol) << key;
  }
}

TEST(PeerCases, TokensChooseWorkedExampleD1) {
  const json& c = peer_case("D1");
  const auto probs3 =
      c["inputs"]["router_probs"].get<std::vector<std::vector<std::vector<float>>>>();
  const int64_t T = c["params"]["tokens"], E = c["params"]["num_experts"], k = c["params"]["k"],
                C = c["params"]["expert_capacity"];
  std::vector<float> p;
  for (const auto& row : probs3[0]) p.insert(p.end(), row.begin(), row.end());
  const double tol = c["tolerance"]["atol"];
  for (const auto& [key, bpr] : {std::pair{"bpr_true", true}, std::pair{"bpr_false", false}}) {
    const json& exp = c["expected"][key];
    const test::Routed routed = test::route_probs(
        test::router_config(RouterType::kTokensChoose, E, k, bpr), p.data(), 1, T, C);
    const RoutingPlan& plan = routed.plan;
    std::vector<float> d(T * E * C), w(T * E * C);
    plan.to_dense(d.data(), w.data());
    int nonzero = 0;
    for (float v : w) nonzero += v != 0;
    EXPECT_EQ(nonzero, static_cast<int>(exp["combine_nonzero"].size())) << key;
    for (auto it = exp["combine_nonzero"].begin(); it != exp["combine_nonzero"].end(); ++it) {
      int t, e, s;
      ASSERT_EQ(std::sscanf(it.key().c_str(), "t%d,e%d,c%d", &t, &e, &s), 3);
      EXPECT_NEAR(w[(t * E + e) * C + s], it.value().get<double>(), tol) << key << " " << it.key();
      EXPECT_EQ(d[(t * E + e) * C + s], 1.f);
    }
    const RouteResult st = plan_metrics(plan, -1);
    EXPECT_NEAR(routed.saved.aux_loss, exp["auxiliary_loss"].get<double>(), tol) << key;
    EXPECT_NEAR(st.fraction_tokens_left_behind, exp["fraction_tokens_left_behind"].get<double>(),
                tol);
    EXPECT_NEAR(st.expert_usage, exp["expert_usage"].get<double>(), tol);
    EXPECT_NEAR(st.router_confidence, exp["router_confidence"].get<double>(), tol) << key;
  }
}

}  // namespace
}  // namespace sparsemoe
