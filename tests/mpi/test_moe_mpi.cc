// Expert parallelism against one process, under mpirun (2 and 4 ranks): every rank builds the
// same MoE layer twice, runs the whole global batch through one copy without a communicator (the
// one-process reference) and its own whole groups through the other with world(), which owns a
// block of experts. Each rank's outputs and input gradients, and the expert-weight gradients of
// the experts it owns, must equal the reference's bit for bit: with jitter, both dropouts, the
// four routers, capacity and dropless routing, and an expert count the ranks do not divide. The
// router's weight gradient, a sum over every token, is split into 4 data-parallel units added as
// a fixed tree (ForwardOptions::units): equal bit for bit too.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "sparsemoe/core/rng.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/moe/moe_layer.h"

namespace sparsemoe {
namespace {

struct Case {
  std::string name;
  RouterType type;
  int64_t E, k;
  bool dropless = false;
  SecondExpertPolicy top2_policy = SecondExpertPolicy::kAll;
};

MoeLayerConfig config(const Case& c) {
  MoeLayerConfig m;
  m.hidden_size = 16;
  m.experts.num_experts = m.router.num_experts = c.E;
  m.experts.d_ff = 32;
  m.experts.activation = "gelu";
  m.experts.inner_dropout = 0.1;
  m.experts.output_dropout = 0.1;
  m.experts.kernel_init_stddev = 0.3;
  m.router.type = c.type;
  m.router.num_selected_experts = c.k;
  m.router.kernel_init_stddev = 0.5;
  m.router.jitter_noise = 0.05;
  m.router.load_balancing_loss_weight = 0.01;
  m.router.router_z_loss_weight = 0.001;
  if (c.type == RouterType::kTop2) {
    m.router.top2.second_expert_policy = c.top2_policy;
    m.router.top2.second_expert_threshold = 0.5;
  }
  m.train_capacity_factor = m.eval_capacity_factor = 1.0;
  m.dropless = c.dropless;
  m.seed = 77;
  return m;
}

Tensor global_tensor(Shape s, uint64_t key) {
  Tensor t(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = 2.f * uniform01(key, i) - 1.f;
  return t;
}

void check_case(const Case& c) {
  SCOPED_TRACE(c.name);
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const int64_t B = 8, L = 16, H = 16, Bl = B / P;
  ASSERT_EQ(B % P, 0);
  const MoeLayerConfig cfg = config(c);
  MoeLayer ref(cfg), dist(cfg);
  dist.set_communicator(&w);
  const Tensor x = global_tensor({B, L, H}, 1), dy = global_tensor({B, L, H}, 2);
  Tensor y_ref, dx_ref, y, dx;
  for (uint64_t step : {3, 4}) {  // a second step: workspaces reused, new noise
    ForwardOptions opt{true, step};
    opt.units = 4;  // data-parallel units: the router's gradient is summed per unit, as a tree
    const MoeMetrics m_ref = ref.forward(x, y_ref, opt);
    ref.backward(dy, dx_ref);
    Tensor xl({Bl, L, H}), dyl({Bl, L, H});
    std::copy_n(x.data() + r * Bl * L * H, Bl * L * H, xl.data());
    std::copy_n(dy.data() + r * Bl * L * H, Bl * L * H, dyl.data());
    opt.token_offset = r * Bl * L;
    opt.global_tokens = B * L;
    const MoeMetrics m = dist.forward(xl, y, opt);
    dist.backward(dyl, dx);
    // Mismatches are counted, never returned on: a rank that left early would leave the others
    // waiting in the next collective.
    int64_t bad_y = 0, bad_dx = 0;
    for (int64_t i = 0; i < Bl * L * H; ++i) {
      bad_y += y[i] != y_ref[r * Bl * L * H + i];
      bad_dx += dx[i] != dx_ref[r * Bl * L * H + i];
    }
    EXPECT_EQ(bad_y, 0) << "outputs differ, step " << step;
    EXPECT_EQ(bad_dx, 0) << "input gradients differ, step " << step;
    // The losses are this rank's share of the global batch's: their sum is the whole.
    double lb = m.load_balancing_loss, z = m.router_z_loss;
    w.allreduce_sum(&lb, 1);
    w.allreduce_sum(&z, 1);
    EXPECT_NEAR(lb, m_ref.load_balancing_loss, 1e-12 + 1e-9 * std::abs(m_ref.load_balancing_loss));
    EXPECT_NEAR(z, m_ref.router_z_loss, 1e-12 + 1e-9 * std::abs(m_ref.router_z_loss));
  }
  // The owned experts' gradients (accumulated over both steps), bit for bit.
  const ExpertShard sh = expert_shard(c.E, r, P);
  const FfnWeights& a = ref.experts().weights();
  const FfnWeights& b = dist.experts().weights();
  const int64_t F1 = a.glu ? 2 * a.F : a.F;
  auto same_block = [&](const Tensor& want, const Tensor& got, int64_t per_expert,
                        const char* what) {
    int64_t differ = 0, stray = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      if (i >= sh.first * per_expert && i < (sh.first + sh.count) * per_expert)
        differ += got[i] != want[i];
      else
        stray += got[i] != 0.f;  // experts owned elsewhere get nothing here
    }
    EXPECT_EQ(differ, 0) << what << ": gradients of this rank's experts differ";
    EXPECT_EQ(stray, 0) << what << ": gradients of other ranks' experts";
  };
  same_block(a.dw1, b.dw1, H * F1, "dw1");
  same_block(a.dw2, b.dw2, a.F * H, "dw2");
  same_block(a.db1, b.db1, F1, "db1");
  same_block(a.db2, b.db2, H, "db2");
  // The router's gradients: the same units summed in the same tree, across the ranks.
  const GateWeights& ga = ref.gate();
  const GateWeights& gb = dist.gate();
  int64_t differ = 0;
  for (int64_t i = 0; i < ga.kernel_grad.numel(); ++i)
    differ += ga.kernel_grad[i] != gb.kernel_grad[i];
  for (int64_t i = 0; i < ga.bias_grad.numel(); ++i) differ += ga.bias_grad[i] != gb.bias_grad[i];
  EXPECT_EQ(differ, 0) << "router gradients differ";
}

TEST(MpiMoe, ExpertParallelEqualsOneProcess) {
  const Case cases[] = {
      {"experts_choose", RouterType::kExpertsChoose, 8, 1},
      {"tokens_choose k=2", RouterType::kTokensChoose, 8, 2},
      {"tokens_choose k=2 dropless", RouterType::kTokensChoose, 8, 2, true},
      {"top2 random", RouterType::kTop2, 8, 2, false, SecondExpertPolicy::kRandom},
      {"top2 sampling", RouterType::kTop2, 8, 2, false, SecondExpertPolicy::kSampling},
      {"tokens_choose, 6 experts (uneven shards)", RouterType::kTokensChoose, 6, 1},
      {"experts_choose, 3 experts (a rank may own none)", RouterType::kExpertsChoose, 3, 1},
  };
  for (const Case& c : cases) check_case(c);
}

}  // namespace
}  // namespace sparsemoe
