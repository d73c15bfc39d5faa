// lingvo's gating layers: GetSentenceEmbeddings against a brute-force mean, Top2Gating equal to
// Top2GatingOnLogits on inputs . w, sentence gating giving a sentence one routing choice,
// local_dispatch=false equal to one merged group, TaskTop2Gating ignoring the capacity factor,
// finite-difference gradients of the dense combine tensor and the aux loss, and bad input.
#include <gtest/gtest.h>

#include "moe_fixtures.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/lingvo/gshard_gating.h"
#include "sparsemoe/moe/dispatch.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::check_gradient;
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

TEST(Top2GatingLayer, GradientsMatchFiniteDifferences) {
  for (GateInput kind : {GateInput::kTokens, GateInput::kSentence, GateInput::kTask})
    for (bool legacy : {true, false}) {
      Top2GatingConfig c = gate_config(5, 4, 3);
      c.options.legacy_mtf_behavior = legacy;
      c.aux_loss_weight = 0.3;
      Top2Gating gate(c, kind);
      // Inputs (seed 27) with no routing decision within a finite-difference step of a tie: a
      // flipped argmax makes the loss jump, which no gradient describes.
      Tensor x = random_tensor({2, 6, 5}, 27), task = random_tensor({2, 6, 5}, 8);
      const std::vector<int32_t> seg = {1, 1, 2, 2, 2, 0, 3, 4, 4, 5, 5, 5};
      Tensor dispatch, combine, r;
      auto loss = [&] {
        const double aux = gate.forward(x, nullptr, &seg, &task, {true, 0});
        gate.dense(dispatch, combine);
        return dot(combine, r) + c.aux_loss_weight * aux;
      };
      gate.forward(x, nullptr, &seg, &task, {true, 0});
      r = random_tensor({2, 6, 4, gate.capacity()}, 9);
      EXPECT_GT(
          gate.routing().saved.over_capacity_1_ratio + gate.routing().saved.over_capacity_2_ratio,
          0.0);
      Tensor dx({2, 6, 5});
      for (auto& p : gate.params()) p.grad->zero();
      gate.backward(r, dx);
      const std::string what = std::to_string(static_cast<int>(kind)) + (legacy ? " legacy" : "");
      check_gradient(what + " w", *gate.params()[0].value, *gate.params()[0].grad, loss, 20);
      check_gradient(what + " input", kind == GateInput::kTask ? task : x, dx, loss, 30);
    }
}

// SentenceTop2Gating + FeedForwardNetworksApplyGating (experts_forward over FeedForwardExperts):
// the sparse path equals the reference sources' einsum form on the same gate, and the whole chain
// (inputs -> sentence gate -> experts -> combine) has the finite-difference gradient.
TEST(Top2GatingLayer, SentenceGateWithExpertsSparseEqualsEinsumAndGradients) {
  Top2GatingConfig gc = gate_config(6, 3, 3);
  gc.aux_loss_weight = 0.1;
  Top2Gating gate(gc, GateInput::kSentence);
  FeedForwardExpertsConfig ec;
  ec.num_experts = 3;
  ec.d_ff = 5;
  ec.activation = "gelu";
  ec.kernel_init_stddev = 0.4;
  FeedForwardExperts experts(ec, 6, 11);
  ExpertRows rows;
  // Inputs (seed 41) keep every routing decision clear of ties within the difference step.
  Tensor x = random_tensor({2, 6, 6}, 41), r = random_tensor({2, 6, 6}, 42), y({2, 6, 6});
  const std::vector<int32_t> seg = {1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4};
  auto loss = [&] {
    const double aux = gate.forward(x, nullptr, &seg, nullptr, {true, 0});
    experts_forward(gate.plan(), experts, x.data(), y.data(), {true, 0}, rows);
    return dot(y, r) + gc.aux_loss_weight * aux;
  };
  loss();
  // The einsum form: expert_in = gsec,gsm->egcm over the gate's dense dispatch [G, S, E, C], the
  // experts' dense API on every slot, y = gsec,egcm->gsm over the dense combine.
  Tensor dispatch, combine;
  gate.dense(dispatch, combine);
  const int64_t G = dispatch.dim(0), S = dispatch.dim(1), E = 3, C = dispatch.dim(3), M = 6;
  Tensor expert_in({G, E, C, M}), expert_out, yr({2, 6, 6});
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t cc = 0; cc < C; ++cc)
        for (int64_t m = 0; m < M; ++m) {
          double acc = 0;
          for (int64_t s = 0; s < S; ++s)
            acc += dispatch[((g * S + s) * E + e) * C + cc] * x[(g * S + s) * M + m];
          expert_in[((g * E + e) * C + cc) * M + m] = static_cast<float>(acc);
        }
  FeedForwardExperts dense_experts(ec, 6, 11);  // the same seed: the same weights
  dense_experts.forward(expert_in, expert_out, {});
  for (int64_t g = 0; g < G; ++g)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t m = 0; m < M; ++m) {
        double acc = 0;
        for (int64_t e = 0; e < E; ++e)
          for (int64_t cc = 0; cc < C; ++cc)
            acc += combine[((g * S + s) * E + e) * C + cc] *
                   expert_out[((g * E + e) * C + cc) * M + m];
        yr[(g * S + s) * M + m] = static_cast<float>(acc);
      }
  Tensor y_eval({2, 6, 6});  // the sparse path in eval, as the dense call above
  experts_forward(gate.plan(), experts, x.data(), y_eval.data(), {}, rows);
  EXPECT_LT(test::normalized_error(y_eval, yr), 1e-5);
  Tensor dx({2, 6, 6});
  for (auto& p : gate.params()) p.grad->zero();
  zero_grads(experts.params());
  experts_backward(gate.plan(), experts, r.data(), dx.data(), rows);
  gate.backward_rows(rows.dweight.data(), dx);  // adds the path through the gate
  check_gradient("x", x, dx, loss, 40);
  check_gradient("w", *gate.params()[0].value, *gate.params()[0].grad, loss, 18);
  for (auto& p : experts.params()) check_gradient(p.name, *p.value, *p.grad, loss, 20);
}

}  // namespace
}  // namespace sparsemoe
