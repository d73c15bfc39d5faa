// Expert parallelism against one process, under mpirun (2 and 4 ranks): every rank builds the
// same MoE layer twice, runs every unit of the global batch through one copy without a
// communicator (the one-process reference) and its own units through the other with world(),
// which owns a block of experts. Each rank's outputs and input gradients, and the expert-weight
// gradients of the experts it owns, must equal the reference's bit for bit: with jitter, both
// dropouts, the four routers, capacity and dropless routing, and an expert count the ranks do not
// divide. The step is 2P data-parallel units, one per call: the owned experts' gradients must equal
// one process's tree over the units' gradients, and the router's each unit's own; with overlap
// and the return exchange in chunks or without. With sharded
// storage a rank holds its own experts' weights and gradients only, and a replicated inference
// call (every rank the whole batch) gives every rank one process's output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "sparsemoe/core/errors.h"
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

// The layer's gradients as one buffer: the router's, then the experts'.
std::vector<float> grads_of(MoeLayer& layer) {
  std::vector<float> g;
  for (const ParamRef& p : layer.params())
    g.insert(g.end(), p.grad->data(), p.grad->data() + p.grad->numel());
  return g;
}

void check_case(const Case& c, bool overlap, int chunks, bool sharded) {
  SCOPED_TRACE(
      c.name +
      (overlap ? ", overlap, " + std::to_string(chunks) + " return chunks" : ", no overlap") +
      (sharded ? ", sharded storage" : ""));
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  // 2P units of B / 2P sequences (whole routing groups); each rank runs two, one call each.
  const int64_t B = 8, L = 16, H = 16, U = 2 * P, Bu = B / U, Nu = Bu * L, mine = U / P;
  ASSERT_EQ(B % U, 0);
  const MoeLayerConfig cfg = config(c);
  MoeLayer ref(cfg), dist(cfg);
  dist.set_communicator(&w, sharded);
  dist.set_overlap(overlap, chunks);
  const ExpertShard sh = expert_shard(c.E, r, P);
  if (sharded) {  // the stacked expert tensors hold this rank's experts only, in the whole's layout
    int64_t wrong = 0;
    for (const ParamRef& p : dist.params())
      if (p.experts > 0)
        wrong += !p.sharded || p.value->dim(0) != sh.count || p.expert0 != sh.first ||
                 p.grad->shape() != p.value->shape() || p.full_shape()[0] != c.E;
    EXPECT_EQ(wrong, 0) << "the expert tensors are not this rank's shard";
    // Every rank lists the same parameters (a rank holding no experts too): collectives over
    // parameter lists depend on it.
    EXPECT_EQ(dist.params().size(), ref.params().size());
    // Their values are the whole layer's rows for these experts.
    const Tensor& whole = ref.experts().weights().w1;
    const Tensor& part = dist.experts().weights().w1;
    const int64_t per = whole.numel() / c.E;
    int64_t differ = 0;
    for (int64_t i = 0; i < part.numel(); ++i) differ += part[i] != whole[sh.first * per + i];
    EXPECT_EQ(differ, 0) << "the kept experts' weights changed";
  }
  const Tensor x = global_tensor({B, L, H}, 1), dy = global_tensor({B, L, H}, 2);
  auto unit_of = [&](const Tensor& t, int64_t u) {
    Tensor part({Bu, L, H});
    std::copy_n(t.data() + u * Nu * H, Nu * H, part.data());
    return part;
  };
  const size_t router_floats =
      static_cast<size_t>(ref.gate().kernel.numel() + ref.gate().bias.numel());
  for (uint64_t step : {3, 4}) {  // a second step: workspaces and parts reused, new noise
    ForwardOptions opt{true, step};
    opt.units = U;
    opt.global_tokens = B * L;
    // One process: every unit on its own from zeroed gradients, the units' gradients a tree.
    std::vector<Tensor> y_ref(U), dx_ref(U);
    std::vector<MoeMetrics> m_ref(U);
    std::vector<std::vector<float>> g_ref(U);
    for (int64_t u = 0; u < U; ++u) {
      zero_grads(ref.params());
      opt.token_offset = u * Nu;
      m_ref[u] = ref.forward(unit_of(x, u), y_ref[u], opt);
      ref.backward(unit_of(dy, u), dx_ref[u]);
      g_ref[u] = grads_of(ref);
    }
    std::vector<const float*> parts;
    for (const auto& g : g_ref) parts.push_back(g.data());
    std::vector<float> tree(g_ref[0].size());
    tree_sum(parts, static_cast<int64_t>(tree.size()), tree.data());
    // P processes: rank r runs units [r * mine, (r + 1) * mine), one call each, experts split.
    // Mismatches are counted, never returned on: a rank that left early would leave the others
    // waiting in the next collective.
    int64_t bad_y = 0, bad_dx = 0, bad_router = 0, bad_loss = 0;
    for (int64_t j = 0; j < mine; ++j) {
      const int64_t u = r * mine + j;
      // The second step writes the gradients (GradMode::kOverwrite) over buffers of NaN instead
      // of zeroing them: the same bits.
      const bool overwrite = step == 4;
      for (const ParamRef& p : dist.params()) p.grad->fill(overwrite ? NAN : 0.f);
      opt.token_offset = u * Nu;
      Tensor y, dx;
      const MoeMetrics m = dist.forward(unit_of(x, u), y, opt);
      dist.backward(unit_of(dy, u), dx, 1.0,
                    overwrite ? GradMode::kOverwrite : GradMode::kAccumulate);
      for (int64_t i = 0; i < Nu * H; ++i) {
        bad_y += y[i] != y_ref[u][i];
        bad_dx += dx[i] != dx_ref[u][i];
      }
      // The router's gradient is the call's own, like any layer's: unit u's.
      const std::vector<float> g = grads_of(dist);
      for (size_t i = 0; i < router_floats; ++i) bad_router += g[i] != g_ref[u][i];
      // Each unit's loss share (global normalisers) is one process's.
      bad_loss += m.load_balancing_loss != m_ref[u].load_balancing_loss;
      bad_loss += m.router_z_loss != m_ref[u].router_z_loss;
    }
    EXPECT_EQ(bad_y, 0) << "outputs differ, step " << step;
    EXPECT_EQ(bad_dx, 0) << "input gradients differ, step " << step;
    EXPECT_EQ(bad_router, 0) << "router gradients differ, step " << step;
    EXPECT_EQ(bad_loss, 0) << "losses differ, step " << step;
    // After the step's last unit: the owned experts' gradients are the tree over all units (the
    // units of every rank), bit for bit; experts owned elsewhere get nothing here (sharded: are
    // not held at all).
    const FfnWeights& a = ref.experts().weights();
    const int64_t F1 = a.glu ? 2 * a.F : a.F;
    const std::vector<float> g = grads_of(dist);
    size_t at = router_floats, held = router_floats;
    int64_t differ = 0, stray = 0;
    // params() order: w1, b1, w2, b2.
    for (const auto& [t, per] : {std::pair{&a.dw1, H * F1}, std::pair{&a.db1, F1},
                                 std::pair{&a.dw2, a.F * H}, std::pair{&a.db2, H}}) {
      for (int64_t i = 0; i < t->numel(); ++i, ++at) {
        if (i >= sh.first * per && i < (sh.first + sh.count) * per)
          differ += (sharded ? g[held++] : g[at]) != tree[at];
        else if (!sharded)
          stray += g[at] != 0.f;
      }
    }
    EXPECT_EQ(sharded ? held : at, g.size());
    EXPECT_EQ(differ, 0) << "gradients of this rank's experts differ, step " << step;
    EXPECT_EQ(stray, 0) << "gradients of other ranks' experts, step " << step;
  }
  // Inference with every rank holding the whole batch: each runs its own experts, the outputs are
  // shared; every rank gets one process's output and metrics.
  Tensor y_ref, y;
  const MoeMetrics m_ref = ref.forward(x, y_ref, {.training = false, .step = 5});
  const MoeMetrics m = dist.forward(x, y, {.training = false, .step = 5, .replicated = true});
  int64_t bad = 0;
  for (int64_t i = 0; i < y.numel(); ++i) bad += y[i] != y_ref[i];
  EXPECT_EQ(bad, 0) << "replicated inference differs from one process's";
  EXPECT_EQ(m.router_z_loss, m_ref.router_z_loss);
  EXPECT_EQ(m.tokens_per_expert, m_ref.tokens_per_expert);
  // It is inference only: a backward is refused (on every rank alike, no collective involved).
  Tensor dx;
  EXPECT_THROW(dist.backward(dy, dx), InvalidArgument);
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
  // Overlap with the return exchange in 1, 3 (uneven blocks, some empty) and 4 chunks.
  for (const Case& c : cases)
    for (int chunks : {0, 1, 3, 4})
      for (bool sharded : {false, true}) check_case(c, chunks > 0, std::max(chunks, 1), sharded);
}

}  // namespace
}  // namespace sparsemoe
