// lingvo's gating layers: GetSentenceEmbeddings against a brute-force mean, Top2Gating equal to
// Top2GatingOnLogits on inputs . w, sentence gating giving a sentence one routing choice,
// local_dispatch=false equal to one merged group, TaskTop2Gating ignoring the capacity factor, and
// bad input. Gradients of the dense combine and the aux loss per gate kind, and the sentence gate
// with experts against the einsum form: the harness's lingvo/ cases.
#include <gtest/gtest.h>

#include "moe_fixtures.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/lingvo/gshard_gating.h"
#include "sparsemoe/moe/dispatch.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::dot;
using test::random_tensor;

Top2GatingConfig gate_config(int64_t M, int64_t E, int64_t c_dim, double cf = 0.0) {
  Top2GatingConfig c;
  c.model_dim = M;
  c.num_experts = E;
  c.expert_capacity_dim = c_dim;
  c.capacity_factor = cf;
  c.init_stddev = 0.7;
  c.seed = 5;
  return c;
}

TEST(SentenceEmbeddings, SegmentMeansOverTheWholeBatchAndZeroPadding) {
  const std::vector<int32_t> seg = {1, 1, 2, 0, 0,
                                    3, 3, 3, 3, 0};  // the reference sources' docstring ids
  const Tensor x = random_tensor({10, 3}, 1);
  Tensor out({10, 3});
  sentence_embeddings(x.data(), seg.data(), 10, 3, out.data());
  for (int64_t n = 0; n < 10; ++n)
    for (int64_t m = 0; m < 3; ++m) {
      double sum = 0;
      int cnt = 0;
      for (int64_t k = 0; k < 10; ++k)
        if (seg[n] != 0 && seg[k] == seg[n]) sum += x[k * 3 + m], ++cnt;
      EXPECT_NEAR(out[n * 3 + m], cnt ? sum / cnt : 0.0, 1e-6) << n;
    }
  std::vector<int32_t> bad = seg;
  bad[4] = -1;
  EXPECT_THROW(sentence_embeddings(x.data(), bad.data(), 10, 3, out.data()), InvalidArgument);
}

TEST(Top2GatingLayer, TokenGatingIsTop2OnInputsTimesW) {
  Top2Gating gate(gate_config(6, 4, 3), GateInput::kTokens);
  const Tensor x = random_tensor({2, 7, 6}, 2);
  gate.forward(x, nullptr, nullptr, nullptr, {true, 0});
  Tensor logits({14, 4});
  gemm_reference(false, false, 14, 4, 6, 1.f, x.data(), 6, gate.params()[0].value->data(), 4, 0.f,
                 logits.data(), 4);
  const RouterConfig rc = test::router_config(RouterType::kTop2, 4);
  RoutingRecord rec;
  route_logits(*make_policy(rc), rc, logits.data(), 2, 7, 3, nullptr, false, 0, rec);
  const RoutingPlan& plan = rec.plan;
  EXPECT_EQ(gate.plan().row_token, plan.row_token);
  EXPECT_EQ(gate.plan().row_slot, plan.row_slot);
  for (int64_t r = 0; r < plan.rows(); ++r)
    EXPECT_NEAR(gate.plan().row_weight[r], plan.row_weight[r], 1e-6);
}

TEST(Top2GatingLayer, SentenceGatingRoutesASentenceTogether) {
  Top2Gating gate(gate_config(5, 4, 16), GateInput::kSentence);
  const Tensor x = random_tensor({2, 6, 5}, 3);
  const std::vector<int32_t> seg = {1, 1, 1, 2, 2, 0, 3, 3, 4, 4, 4, 0};
  Tensor pad({2, 6});
  for (int64_t n = 0; n < 12; ++n) pad[n] = seg[n] == 0 ? 1.f : 0.f;
  gate.forward(x, &pad, &seg, nullptr, {true, 0});
  const auto& tk = gate.routing().saved.top2;
  for (int64_t n = 0; n < 12; ++n)
    for (int64_t k = 0; k < 12; ++k)
      if (seg[n] != 0 && seg[n] == seg[k]) {
        EXPECT_EQ(tk[n].e1, tk[k].e1);
        EXPECT_EQ(tk[n].e2, tk[k].e2);
      }
  for (int64_t r = 0; r < gate.plan().rows(); ++r) EXPECT_NE(seg[gate.plan().row_token[r]], 0);
}

TEST(Top2GatingLayer, LocalDispatchFalseIsOneMergedGroup) {
  Top2GatingConfig c = gate_config(6, 4, 0, 1.0);
  c.local_dispatch = false;
  Top2Gating merged(c, GateInput::kTokens);
  c.local_dispatch = true;
  Top2Gating one(c, GateInput::kTokens);  // same seed, same weights
  const Tensor x = random_tensor({3, 8, 6}, 4);
  const Tensor x1({1, 24, 6}, x.to_vector());
  merged.forward(x, nullptr, nullptr, nullptr, {true, 0});
  one.forward(x1, nullptr, nullptr, nullptr, {true, 0});
  EXPECT_EQ(merged.capacity(), lingvo_expert_capacity(0, 1.0, 24, 4));
  EXPECT_EQ(merged.plan().row_token, one.plan().row_token);
  EXPECT_EQ(merged.plan().row_weight, one.plan().row_weight);
  Tensor d, cmb;
  merged.dense(d, cmb);
  EXPECT_EQ(d.shape(), (Shape{3, 8, 4, merged.capacity()}));  // reshaped back to [G, S, E, C]
}

TEST(Top2GatingLayer, TaskGatingUsesTheGivenCapacityOnly) {
  Top2Gating gate(gate_config(4, 3, 2, 4.0), GateInput::kTask);
  const Tensor x = random_tensor({1, 9, 4}, 5), task = random_tensor({1, 9, 4}, 6);
  gate.forward(x, nullptr, nullptr, &task, {true, 0});
  EXPECT_EQ(gate.capacity(), 2);  // lingvo passes no capacity_factor to TaskTop2Gating
  Tensor wrong({1, 8, 4});
  EXPECT_THROW(gate.forward(x, nullptr, nullptr, &wrong, {}), InvalidArgument);
  EXPECT_THROW(gate.forward(x, nullptr, nullptr, nullptr, {}), InvalidArgument);
  Top2Gating sent(gate_config(4, 3, 2), GateInput::kSentence);
  EXPECT_THROW(sent.forward(x, nullptr, nullptr, nullptr, {}), InvalidArgument);
}

}  // namespace
}  // namespace sparsemoe
