// Finite-difference gradient checks for every backward: FeedForward, FeedForwardExperts (the
// reference sources' dense API) and MoeLayer with each router kind, with capacity drops present,
// dropout, jitter, and the weighted load-balancing and z losses in the objective.
#include <gtest/gtest.h>

#include "moe_fixtures.h"
#include "sparsemoe/moe/experts.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/nn/feed_forward.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::check_gradient;
using test::dot;
using test::random_tensor;

TEST(Gradients, FeedForward) {
  for (const char* act : {"relu", "gelu", "gelu_tanh", "glu_gelu"}) {
    FeedForwardConfig c;
    c.d_ff = 10;
    c.glu = std::string(act) == "glu_gelu";  // the GLU variant: [H, 2F] intermediate kernel
    c.activation = c.glu ? "gelu" : act;
    c.inner_dropout = 0.2;
    c.output_dropout = 0.1;
    c.kernel_init_stddev = 0.4;
    FeedForward ff(c, 6, 3);
    Tensor x = random_tensor({2, 3, 6}, 1), r = random_tensor({2, 3, 6}, 2), y, dx;
    const ForwardOptions opt{true, 5};
    auto loss = [&] {
      ff.forward(x, y, opt);
      return dot(y, r);
    };
    loss();
    zero_grads(ff.params());
    ff.backward(r, dx);
    check_gradient(std::string(act) + " x", x, dx, loss);
    for (auto& p : ff.params())
      check_gradient(std::string(act) + " " + p.name, *p.value, *p.grad, loss);
  }
}

TEST(Gradients, FeedForwardExpertsDenseApi) {
  FeedForwardExpertsConfig c;
  c.num_experts = 3;
  c.d_ff = 7;
  c.inner_dropout = 0.1;
  c.kernel_init_stddev = 0.4;
  FeedForwardExperts ffe(c, 5, 9);
  Tensor x = random_tensor({2, 3, 4, 5}, 1), r = random_tensor({2, 3, 4, 5}, 2), y, dx;
  auto loss = [&] {
    ffe.forward(x, y, {true, 1});
    return dot(y, r);
  };
  loss();
  zero_grads(ffe.params());
  ffe.backward(r, dx);
  check_gradient("x", x, dx, loss);
  for (auto& p : ffe.params()) check_gradient(p.name, *p.value, *p.grad, loss);
}

struct GradCase {
  const char* name;
  RouterType type;
  int64_t k;
  double cf;
  bool bpr;
};

class MoeGradients : public ::testing::TestWithParam<GradCase> {};

TEST_P(MoeGradients, MatchFiniteDifferences) {
  const GradCase gc = GetParam();
  MoeLayerConfig c = test::small_moe(gc.type, 4, gc.k, gc.cf);
  c.router.batch_prioritized_routing = gc.bpr;
  c.router.jitter_noise = 0.05;
  c.router.router_z_loss_weight = 0.05;
  c.router.load_balancing_loss_weight = 0.2;
  c.experts.inner_dropout = 0.1;
  c.experts.output_dropout = 0.1;
  MoeLayer moe(c);
  Tensor x = random_tensor({2, 8, 8}, 21), r = random_tensor({2, 8, 8}, 22), y;
  const ForwardOptions opt{true, 3};
  auto loss = [&] {
    const MoeMetrics m = moe.forward(x, y, opt);
    return dot(y, r) + m.loss;
  };
  const MoeMetrics m = moe.forward(x, y, opt);
  // Capacity drops (tokens-choose) or tokens left behind (experts-choose) must be present.
  if (gc.type == RouterType::kTokensChoose)
    EXPECT_LT(moe.plan().rows(), 16 * gc.k) << "no (token, expert) choice was dropped";
  else
    EXPECT_GT(m.fraction_tokens_left_behind, 0.0);
  test::check_moe_gradients(moe, x, r, loss);
}

INSTANTIATE_TEST_SUITE_P(
    Routers, MoeGradients,
    ::testing::Values(GradCase{"ec", RouterType::kExpertsChoose, 1, 0.5, false},
                      GradCase{"tc1", RouterType::kTokensChoose, 1, 0.5, false},
                      GradCase{"tc1_bpr", RouterType::kTokensChoose, 1, 0.5, true},
                      GradCase{"tc2", RouterType::kTokensChoose, 2, 0.75, true}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace sparsemoe
