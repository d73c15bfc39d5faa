// Layer invariants (the layer against the reference and finite differences: the harness's moe/
// cases): one expert with top-1 == dense FeedForward, dropless == a brute-force per-token loop,
// dropped tokens give exact zeros, the loss scale, and the Keras-like surface.
#include <gtest/gtest.h>

#include <memory>

#include "moe_fixtures.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/ops/kernels.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::bitwise_equal;
using test::normalized_error;
using test::random_tensor;
using test::small_moe;

TEST(MoeLayer, OneExpertTop1EqualsDenseFeedForward) {
  for (RouterType type : {RouterType::kExpertsChoose, RouterType::kTokensChoose}) {
    MoeLayerConfig c = small_moe(type, 1, 1, 1.0);
    MoeLayer moe(c);
    FeedForwardConfig fc;
    fc.d_ff = c.experts.d_ff;
    fc.activation = c.experts.activation;
    FeedForward ff(fc, c.hidden_size);
    const char* names[] = {"intermediate/kernel", "intermediate/bias", "output/kernel",
                           "output/bias"};
    for (const char* n : names) {
      Tensor w = find_weight(moe.params(), std::string("experts/") + n);
      Tensor dense = find_weight(ff.params(), n);
      set_weight(ff.params(), n, Tensor(dense.shape(), w.to_vector()));
    }
    Tensor x = random_tensor({2, 5, 8}, 1), dy = random_tensor({2, 5, 8}, 2), y1, y2, dx1, dx2;
    moe.forward(x, y1);
    ff.forward(x, y2);
    EXPECT_LT(normalized_error(y1, y2), 1e-6);
    moe.backward(dy, dx1);
    ff.backward(dy, dx2);
    EXPECT_LT(normalized_error(dx1, dx2), 1e-6);
    for (const char* n : names) {
      const auto pm = moe.params();
      const auto pf = ff.params();
      const Tensor* gm = nullptr;
      const Tensor* gf = nullptr;
      for (auto& p : pm)
        if (p.name == std::string("experts/") + n) gm = p.grad;
      for (auto& p : pf)
        if (p.name == n) gf = p.grad;
      ASSERT_TRUE(gm && gf);
      EXPECT_LT(normalized_error(gm->data(), gf->data(), gf->numel()), 1e-6) << n;
    }
    // A single expert's softmax is constant: no router gradient.
    EXPECT_EQ(moe.gate().kernel_grad[0], 0.f);
  }
}

TEST(MoeLayer, DroplessEqualsBruteForcePerTokenLoop) {
  MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 5, 2, 1.0);
  c.dropless = true;
  MoeLayer moe(c);
  Tensor x = random_tensor({3, 7, 8}, 5), y;
  const MoeMetrics m = moe.forward(x, y);
  EXPECT_EQ(m.fraction_tokens_left_behind, 0.0);
  const auto& w = moe.experts().weights();
  const Tensor& probs = moe.activations().routing.probs;
  const int64_t E = 5, H = 8, F = 12;
  for (int64_t n = 0; n < 21; ++n) {
    // Top-2 experts of token n, by probability (ties to the lower index).
    int64_t e1 = 0;
    for (int64_t e = 1; e < E; ++e)
      if (probs[n * E + e] > probs[n * E + e1]) e1 = e;
    int64_t e2 = e1 == 0 ? 1 : 0;
    for (int64_t e = 0; e < E; ++e)
      if (e != e1 && probs[n * E + e] > probs[n * E + e2]) e2 = e;
    for (int64_t h = 0; h < H; ++h) {
      double expect = 0;
      for (int64_t e : {e1, e2}) {
        double out = w.b2[e * H + h];
        for (int64_t f = 0; f < F; ++f) {
          double pre = w.b1[e * F + f];
          for (int64_t i = 0; i < H; ++i) pre += x[n * H + i] * w.w1[(e * H + i) * F + f];
          out += activate(Activation::kGelu, static_cast<float>(pre)) * w.w2[(e * F + f) * H + h];
        }
        expect += probs[n * E + e] * out;
      }
      EXPECT_NEAR(y[n * H + h], expect, 1e-5) << "token " << n;
    }
  }
}

TEST(MoeLayer, DroppedTokensOutputExactZero) {
  MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 4, 1, 0.25);
  MoeLayer moe(c);
  Tensor x = random_tensor({2, 16, 8}, 8), y;
  const MoeMetrics m = moe.forward(x, y);
  EXPECT_GT(m.fraction_tokens_left_behind, 0.0);
  const auto& plan = moe.plan();
  int dropped = 0;
  for (int64_t n = 0; n < 32; ++n)
    if (plan.token_offsets[n + 1] == plan.token_offsets[n]) {
      ++dropped;
      for (int64_t h = 0; h < 8; ++h) EXPECT_EQ(y[n * 8 + h], 0.f);
    }
  EXPECT_EQ(dropped, static_cast<int>(m.fraction_tokens_left_behind * 32 + 0.5));
  // C = 0 drops everything.
  c.train_capacity_factor = c.eval_capacity_factor = 0.0;
  MoeLayer none(c);
  const MoeMetrics m0 = none.forward(x, y);
  EXPECT_EQ(m0.expert_capacity, 0);
  EXPECT_EQ(m0.fraction_tokens_left_behind, 1.0);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y[i], 0.f);
}

// E experts, k 1 (experts-choose) or 2, with the z and load-balancing losses and jitter in play.
MoeLayerConfig noisy_moe(RouterType type, int64_t E, double capacity_factor) {
  MoeLayerConfig c =
      small_moe(type, E, type == RouterType::kExpertsChoose ? 1 : 2, capacity_factor);
  c.router.router_z_loss_weight = 0.05;
  c.router.load_balancing_loss_weight = 0.2;
  c.router.jitter_noise = 0.05;
  return c;
}

// backward's loss_scale: with dy = s * r and loss_scale s, every gradient (the aux and z-loss
// terms included) is s times the gradient for r at scale 1; s = 4 makes that exact in floats.
TEST(MoeLayer, LossScaleScalesEveryGradientIncludingTheAuxLosses) {
  for (RouterType type :
       {RouterType::kExpertsChoose, RouterType::kTokensChoose, RouterType::kTop2}) {
    const MoeLayerConfig c = noisy_moe(type, 4, 0.75);
    Tensor x = random_tensor({2, 8, 8}, 31), r = random_tensor({2, 8, 8}, 32), r4 = r, dx1, dx4;
    for (int64_t i = 0; i < r4.numel(); ++i) r4[i] *= 4.f;
    MoeLayer a(c), b(c);
    Tensor y;
    a.forward(x, y, {true, 2});
    a.backward(r, dx1);
    b.forward(x, y, {true, 2});
    b.backward(r4, dx4, 4.0);
    for (int64_t i = 0; i < dx1.numel(); ++i) ASSERT_EQ(dx4[i], 4.f * dx1[i]) << i;
    const auto pa = a.params(), pb = b.params();
    for (size_t p = 0; p < pa.size(); ++p)
      for (int64_t i = 0; i < pa[p].grad->numel(); ++i)
        ASSERT_EQ((*pb[p].grad)[i], 4.f * (*pa[p].grad)[i]) << pa[p].name << " " << i;
    // ... and the aux terms are really in play: without them the router gradient differs.
    MoeLayerConfig plain = c;
    plain.router.router_z_loss_weight = plain.router.load_balancing_loss_weight = 0;
    MoeLayer d(plain);
    Tensor dxd;
    d.forward(x, y, {true, 2});
    d.backward(r, dxd);
    EXPECT_FALSE(test::bitwise_equal(*d.params()[0].grad, *pa[0].grad)) << router_type_name(type);
  }
}

// GradMode::kOverwrite writes every gradient over whatever the buffers held (NaN here): the same
// bits as zeroing them and accumulating, and the same dx, for each router (top2 with its
// sampling noise, jitter and the aux losses in play, a dropless tokens-choose) and with a
// backbone (its FeedForward takes the mode too). Experts that get no token are zeros.
TEST(MoeLayer, OverwrittenGradientsEqualZeroedAndAccumulated) {
  auto check = [](auto& written, auto& summed, const Tensor& x, const std::string& what) {
    SCOPED_TRACE(what);
    const Tensor dy = random_tensor(x.shape(), 9);
    Tensor y, dxw, dxs;
    for (const ParamRef& p : written.params()) p.grad->fill(NAN);
    written.forward(x, y, {true, 3});
    written.backward(dy, dxw, 2.0, GradMode::kOverwrite);
    zero_grads(summed.params());
    summed.forward(x, y, {true, 3});
    summed.backward(dy, dxs, 2.0);
    EXPECT_TRUE(bitwise_equal(dxw, dxs));
    const auto pw = written.params(), ps = summed.params();
    ASSERT_EQ(pw.size(), ps.size());
    for (size_t p = 0; p < pw.size(); ++p)
      EXPECT_TRUE(bitwise_equal(*pw[p].grad, *ps[p].grad)) << pw[p].name;
  };
  const Tensor x = random_tensor({2, 8, 8}, 5);
  int64_t idle = 0;  // experts without tokens, over the cases
  for (RouterType type :
       {RouterType::kExpertsChoose, RouterType::kTokensChoose, RouterType::kTop2}) {
    const MoeLayerConfig c = noisy_moe(type, 12, 0.5);
    MoeLayer written(c), summed(c);
    check(written, summed, x, router_type_name(type));
    const auto& off = written.plan().expert_offsets;
    for (size_t e = 0; e + 1 < off.size(); ++e) idle += off[e + 1] == off[e];
  }
  EXPECT_GT(idle, 0);
  MoeLayerConfig dropless = small_moe(RouterType::kTokensChoose, 6, 1, 1.0);
  dropless.dropless = true;
  MoeLayer written(dropless), summed(dropless);
  check(written, summed, x, "dropless");
  MoeLayerWithBackboneConfig bc;
  bc.moe = small_moe(RouterType::kTokensChoose, 3, 1, 1.0);
  bc.backbone.d_ff = 13;
  MoeLayerWithBackbone wb(bc), sb(bc);
  check(wb, sb, x, "with backbone");
}

// The activation record owns everything backward reads: changing or freeing the caller's input
// between forward and backward changes nothing.
TEST(MoeLayer, BackwardReadsNothingOfTheCallersInput) {
  MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 4, 2, 1.0);
  c.router.jitter_noise = 0.1;
  c.router.router_z_loss_weight = 0.01;
  MoeLayer a(c), b(c);
  Tensor y, dxa, dxb, r = random_tensor({2, 8, 8}, 2);
  Tensor x = random_tensor({2, 8, 8}, 1);
  a.forward(x, y, {true, 1});
  a.backward(r, dxa);
  {
    auto scratch = std::make_unique<Tensor>(random_tensor({2, 8, 8}, 1));
    b.forward(*scratch, y, {true, 1});
    scratch->fill(1e30f);
    scratch.reset();
  }
  b.backward(r, dxb);
  EXPECT_TRUE(test::bitwise_equal(dxa, dxb));
  for (size_t p = 0; p < a.params().size(); ++p)
    EXPECT_TRUE(test::bitwise_equal(*a.params()[p].grad, *b.params()[p].grad));
}

TEST(MoeLayer, TrainingFlagSelectsCapacityFactorAndNoise) {
  MoeLayerConfig c = small_moe(RouterType::kExpertsChoose, 4, 1, 1.0);
  c.train_capacity_factor = 2.0;
  c.eval_capacity_factor = 0.5;
  c.experts.output_dropout = 0.5;
  MoeLayer moe(c);
  Tensor x = random_tensor({2, 8, 8}, 1), y1, y2;
  EXPECT_EQ(moe.forward(x, y1, {true, 0}).expert_capacity, 4);  // round(2*8/4)
  EXPECT_EQ(moe.forward(x, y1, {false, 0}).expert_capacity, 1);
  moe.forward(x, y2, {false, 1});
  EXPECT_TRUE(bitwise_equal(y1, y2));  // evaluation: no dropout, step irrelevant
  moe.forward(x, y1, {true, 1});
  moe.forward(x, y2, {true, 2});
  EXPECT_FALSE(bitwise_equal(y1, y2));  // a new step draws a new dropout mask
}

TEST(MoeLayer, KerasLikeSurface) {
  MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 2, 1, 1.0, 7, 33);
  c.examples_per_group = 2.0;
  MoeLayer moe(c);
  // TFM-SHAPE1: names and grouping (T = 20, G = 2, C = 10 for x [4, 10, 7]).
  std::vector<std::string> names;
  for (auto& p : moe.params()) names.push_back(p.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"router/router_weights/kernel", "router/router_weights/bias",
                                      "experts/intermediate/kernel", "experts/intermediate/bias",
                                      "experts/output/kernel", "experts/output/bias"}));
  EXPECT_EQ(moe.count_params(), 7 * 2 + 2 + 2 * 7 * 33 + 2 * 33 + 2 * 33 * 7 + 2 * 7);
  Tensor x({4, 10, 7}, 1.f), y;
  const MoeMetrics m = moe.forward(x, y, {true, 0});
  EXPECT_EQ(y.shape(), x.shape());
  EXPECT_EQ(m.tokens_per_group, 20);
  EXPECT_EQ(m.num_groups, 2);
  EXPECT_EQ(m.expert_capacity, 10);
  const auto mj = m.to_json();
  for (const char* k : {"router_z_loss", "unscaled_router_z_loss", "load_balancing_loss",
                        "fraction_tokens_left_behind", "router_confidence", "expert_usage"})
    EXPECT_TRUE(mj.contains(k)) << k;
  EXPECT_THROW(moe.forward(Tensor({4, 10, 6}), y), InvalidArgument);
  EXPECT_THROW(set_weight(moe.params(), "experts/output/bias", Tensor({3, 7})), InvalidArgument);
  EXPECT_THROW(find_weight(moe.params(), "nope"), InvalidArgument);
  Tensor b({2, 7}, 0.5f);
  set_weight(moe.params(), "experts/output/bias", b);
  EXPECT_EQ(find_weight(moe.params(), "experts/output/bias")[3], 0.5f);
  // Config round trip and strictness.
  const auto j = c.to_json();
  EXPECT_EQ(MoeLayerConfig::from_json(j).to_json(), j);
  auto bad = j;
  bad["router"]["jitter"] = 0.1;
  try {
    MoeLayerConfig::from_json(bad);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "MoeLayerConfig.router: unknown key 'jitter'");
  }
  // E is given once, in experts; the router takes it from there and refuses its own.
  EXPECT_FALSE(j["router"].contains("num_experts"));
  bad = j;
  bad["experts"]["num_experts"] = 3;
  EXPECT_EQ(MoeLayerConfig::from_json(bad).router.num_experts, 3);
  bad["router"]["num_experts"] = 3;
  EXPECT_EQ(test::error_of([&] { MoeLayerConfig::from_json(bad); }),
            "MoeLayerConfig.router.num_experts: set by experts.num_experts, not here");
  bad = j;
  bad["dropless"] = true;
  bad["router"]["type"] = "experts_choose";
  EXPECT_THROW(MoeLayerConfig::from_json(bad), ConfigError);
}

TEST(MoeLayer, ExpertsChooseCapacityAboveTokensIsAClearError) {
  MoeLayerConfig c = small_moe(RouterType::kExpertsChoose, 2, 1, 1.0);
  c.min_expert_capacity = 8;
  MoeLayer moe(c);
  Tensor x({1, 4, 8}, 1.f), y;
  try {
    moe.forward(x, y);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds tokens_per_group T=4"), std::string::npos);
  }
}

// Data-parallel units change only the order in which the router's weight gradient is summed
// (per unit, then a pairwise tree): outputs and input gradients are the same bits, the router's
// gradient the same to rounding. Shares that are not whole units are clear errors.
TEST(MoeLayer, ExpertParallelCallsMustBeOneUnitEachCheckedBeforeAnyCollective) {
  // With experts over processes, a call is one data-parallel unit of the step: its tokens are
  // global_tokens / units, at a multiple of that. Anything else is refused before the exchange.
  MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 4, 2, 1.0);
  const Tensor x = test::random_tensor({4, 6, 8}, 3);  // 24 tokens
  MoeLayer layer(c);
  test::MirrorRanks two(2);
  layer.set_communicator(&two);
  Tensor y;
  ForwardOptions opt{true, 1};
  auto refused = [&](int64_t units, int64_t offset, int64_t global) {
    opt.units = units, opt.token_offset = offset, opt.global_tokens = global;
    const std::string e = test::error_of([&] { layer.forward(x, y, opt); });
    EXPECT_NE(e.find("each call must be one of the step's units"), std::string::npos) << e;
    EXPECT_NE(e.find("units=" + std::to_string(units)), std::string::npos) << e;
  };
  refused(1, 0, 24);   // fewer units than processes
  refused(3, 0, 72);   // not a multiple of the processes
  refused(2, 0, 96);   // the call is half a unit
  refused(4, 12, 96);  // whole groups, but not at a unit's start
  EXPECT_EQ(two.collectives, 0);
}

TEST(MoeLayerWithBackbone, SumsBackboneAndMoe) {
  MoeLayerWithBackboneConfig c;
  c.moe = small_moe(RouterType::kTokensChoose, 3, 1, 1.0);
  c.backbone.d_ff = 13;
  MoeLayerWithBackbone layer(c);
  Tensor x = random_tensor({2, 6, 8}, 1), y, ym, yb;
  layer.forward(x, y);
  layer.moe().forward(x, ym);
  layer.backbone().forward(x, yb);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_FLOAT_EQ(y[i], ym[i] + yb[i]);
  EXPECT_EQ(layer.count_params(), layer.moe().count_params() + 8 * 13 + 13 + 13 * 8 + 8);
  EXPECT_EQ(MoeLayerWithBackboneConfig::from_json(c.to_json()).to_json(), c.to_json());
}

}  // namespace
}  // namespace sparsemoe
