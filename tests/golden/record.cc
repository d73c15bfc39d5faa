// Golden recorder for refactors that must not change a single bit: runs every MoE configuration
// the tests use (each router kind and option, the lingvo gates with experts, the
// tiny Sparse Mixer with each router), two training steps each on one layer object (so state
// carried between calls is covered too), at 1 and 2 threads, and prints one JSON object: per case,
// a 64-bit FNV-1a hash of every output, input gradient and parameter gradient, and the metrics.
// scripts/golden.sh builds this at a baseline commit and at the working tree and compares the two
// outputs byte for byte. Case names and inputs must stay the same across versions; only the code
// that builds a layer may follow API changes.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/lingvo/gshard_gating.h"
#include "sparsemoe/models/presets.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/moe/dispatch.h"
#include "sparsemoe/moe/moe_layer.h"

namespace sparsemoe {
namespace {

using nlohmann::json;

Tensor random_tensor(Shape shape, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Tensor t(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = lo + (hi - lo) * uniform01(seed, i);
  return t;
}

std::string hash(const float* p, int64_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  for (int64_t i = 0; i < n * static_cast<int64_t>(sizeof(float)); ++i) {
    h ^= b[i];
    h *= 0x100000001b3ull;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx/%lld", static_cast<unsigned long long>(h),
                static_cast<long long>(n));
  return buf;
}
std::string hash(const Tensor& t) { return hash(t.data(), t.numel()); }

json metrics_json(const MoeMetrics& m) {
  json j = m.to_json();
  j["loss"] = m.loss;
  j["num_groups"] = m.num_groups;
  j["tokens_per_group"] = m.tokens_per_group;
  j["expert_capacity"] = m.expert_capacity;
  return j;
}

// ---- the MoE layer configurations of the tests ------------------------------------------------

MoeLayerConfig small_moe(RouterType type, int64_t E = 4, int64_t k = 1, double cf = 1.0,
                         int64_t H = 8, int64_t F = 12) {
  MoeLayerConfig c;
  c.hidden_size = H;
  c.experts.num_experts = E;
  c.experts.d_ff = F;
  c.experts.activation = "gelu";
  c.router.num_experts = E;
  c.router.type = type;
  c.router.num_selected_experts = k;
  c.train_capacity_factor = c.eval_capacity_factor = cf;
  c.seed = 1234;
  c.router.kernel_init_stddev = 0.5;
  c.experts.kernel_init_stddev = 0.3;
  return c;
}

MoeLayerConfig top2_moe(bool legacy, SecondExpertPolicy p, int64_t c_dim, double cf = 0.0) {
  MoeLayerConfig c = small_moe(RouterType::kTop2, 4, 2, cf);
  c.router.use_bias = false;
  c.router.top2.legacy_mtf_behavior = legacy;
  c.router.top2.second_expert_policy = p;
  c.router.top2.second_expert_threshold = 0.5;
  c.expert_capacity_dim = c_dim;
  c.experts.activation = "relu";
  return c;
}

struct LayerCase {
  std::string name;
  MoeLayerConfig config;
  Shape shape;  // [B, L, H]
  uint64_t seed;
  bool training;
  uint64_t step;
  bool paddings = false;
  bool backbone = false;
  int64_t backbone_d_ff = 13;
};

std::vector<LayerCase> layer_cases() {
  std::vector<LayerCase> out;
  // test_layers: sparse vs reference.
  struct Sv {
    const char* name;
    RouterType type;
    int64_t k;
    double cf;
    bool bpr, dropless;
  };
  for (const Sv& s :
       {Sv{"sv_ec_k1_cf100", RouterType::kExpertsChoose, 1, 1.0, false, false},
        Sv{"sv_ec_k1_cf50", RouterType::kExpertsChoose, 1, 0.5, false, false},
        Sv{"sv_tc_k1_cf100_bpr", RouterType::kTokensChoose, 1, 1.0, true, false},
        Sv{"sv_tc_k2_cf100", RouterType::kTokensChoose, 2, 1.0, false, false},
        Sv{"sv_tc_k2_cf50_bpr", RouterType::kTokensChoose, 2, 0.5, true, false},
        Sv{"sv_tc_k3_cf100_bpr_dropless", RouterType::kTokensChoose, 3, 1.0, true, true}}) {
    MoeLayerConfig c = small_moe(s.type, 4, s.k, s.cf);
    c.router.batch_prioritized_routing = s.bpr;
    c.dropless = s.dropless;
    c.router.jitter_noise = 0.1;
    c.experts.inner_dropout = 0.2;
    c.experts.output_dropout = 0.1;
    c.router.router_z_loss_weight = 0.01;
    c.router.load_balancing_loss_weight = 0.1;
    c.examples_per_group = 2;
    out.push_back({s.name, c, {4, 6, 8}, 3, true, 7});
  }
  out.push_back(
      {"one_expert_ec", small_moe(RouterType::kExpertsChoose, 1), {2, 5, 8}, 1, false, 0});
  out.push_back({"one_expert_tc", small_moe(RouterType::kTokensChoose, 1), {2, 5, 8}, 1, false, 0});
  {
    MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 5, 2, 1.0);
    c.dropless = true;
    out.push_back({"dropless_tc_e5_k2", c, {3, 7, 8}, 5, false, 0});
  }
  out.push_back({"dropped_tc_cf25",
                 small_moe(RouterType::kTokensChoose, 4, 1, 0.25),
                 {2, 16, 8},
                 8,
                 false,
                 0});
  out.push_back(
      {"dropped_tc_cf0", small_moe(RouterType::kTokensChoose, 4, 1, 0.0), {2, 16, 8}, 8, true, 0});
  {
    MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 8, 2, 1.25, 64, 300);
    c.router.jitter_noise = 0.05;
    c.experts.inner_dropout = 0.1;
    c.experts.output_dropout = 0.1;
    c.router.load_balancing_loss_weight = 0.01;
    c.router.router_z_loss_weight = 0.001;
    out.push_back({"threads_tc_e8_k2_h64", c, {4, 96, 64}, 1, true, 3});
    c.router.type = RouterType::kExpertsChoose;
    c.router.num_selected_experts = 1;
    out.push_back({"threads_ec_e8_h64", c, {4, 96, 64}, 1, true, 3});
  }
  {
    MoeLayerConfig c = small_moe(RouterType::kExpertsChoose, 4, 1, 1.0);
    c.train_capacity_factor = 2.0;
    c.eval_capacity_factor = 0.5;
    c.experts.output_dropout = 0.5;
    out.push_back({"train_flag_ec_train", c, {2, 8, 8}, 1, true, 1});
    out.push_back({"train_flag_ec_eval", c, {2, 8, 8}, 1, false, 1});
  }
  {
    MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 2, 1, 1.0, 7, 33);
    c.examples_per_group = 2.0;
    out.push_back({"keras_tc_e2", c, {4, 10, 7}, 11, true, 0});
  }
  {
    MoeLayerConfig c = small_moe(RouterType::kExpertsChoose, 4, 1, 0.5);
    c.min_expert_capacity = 3;
    c.examples_per_group = 0.5;
    out.push_back({"ec_min_capacity_epg_half", c, {2, 8, 8}, 12, true, 2});
    c.router.type = RouterType::kTokensChoose;
    c.router.num_selected_experts = 2;
    c.experts.glu = true;
    c.experts.use_bias = false;
    out.push_back({"tc_min_capacity_glu_nobias", c, {2, 8, 8}, 12, true, 2});
  }
  out.push_back({"backbone_tc3",
                 small_moe(RouterType::kTokensChoose, 3, 1, 1.0),
                 {2, 6, 8},
                 1,
                 true,
                 0,
                 false,
                 true});
  // test_gradients.
  struct Gc {
    const char* name;
    RouterType type;
    int64_t k;
    double cf;
    bool bpr;
  };
  for (const Gc& g : {Gc{"grad_ec", RouterType::kExpertsChoose, 1, 0.5, false},
                      Gc{"grad_tc1", RouterType::kTokensChoose, 1, 0.5, false},
                      Gc{"grad_tc1_bpr", RouterType::kTokensChoose, 1, 0.5, true},
                      Gc{"grad_tc2", RouterType::kTokensChoose, 2, 0.75, true}}) {
    MoeLayerConfig c = small_moe(g.type, 4, g.k, g.cf);
    c.router.batch_prioritized_routing = g.bpr;
    c.router.jitter_noise = 0.05;
    c.router.router_z_loss_weight = 0.05;
    c.router.load_balancing_loss_weight = 0.2;
    c.experts.inner_dropout = 0.1;
    c.experts.output_dropout = 0.1;
    out.push_back({g.name, c, {2, 8, 8}, 21, true, 3});
  }
  // test_top2.
  struct Tc {
    const char* name;
    bool legacy;
    SecondExpertPolicy policy;
    bool paddings;
  };
  for (const Tc& t : {Tc{"all_legacy", true, SecondExpertPolicy::kAll, false},
                      Tc{"all", false, SecondExpertPolicy::kAll, false},
                      Tc{"all_legacy_pad", true, SecondExpertPolicy::kAll, true},
                      Tc{"all_pad", false, SecondExpertPolicy::kAll, true},
                      Tc{"random_legacy", true, SecondExpertPolicy::kRandom, false},
                      Tc{"random", false, SecondExpertPolicy::kRandom, true},
                      Tc{"sampling_legacy", true, SecondExpertPolicy::kSampling, true}}) {
    MoeLayerConfig c = top2_moe(t.legacy, t.policy, 3);
    c.experts.inner_dropout = 0.2;
    c.router.load_balancing_loss_weight = 0.1;
    out.push_back({std::string("top2_paths_") + t.name, c, {2, 8, 8}, 7, true, 4, t.paddings});
    c = top2_moe(t.legacy, t.policy, 3);
    c.router.router_z_loss_weight = 0.05;
    c.router.load_balancing_loss_weight = 0.2;
    c.router.jitter_noise = 0.05;
    c.experts.activation = "gelu";
    out.push_back({std::string("top2_grad_") + t.name, c, {2, 8, 8}, 21, true, 3, t.paddings});
  }
  out.push_back(
      {"top2_cf125", top2_moe(true, SecondExpertPolicy::kAll, 0, 1.25), {2, 10, 8}, 1, true, 0});
  {
    MoeLayerConfig a = top2_moe(false, SecondExpertPolicy::kAll, 3);
    a.router.local_dispatch = false;
    out.push_back({"top2_merged", a, {4, 6, 8}, 2, true, 0});
    MoeLayerConfig g = top2_moe(true, SecondExpertPolicy::kAll, 3);
    g.experts.glu = true;
    g.experts.use_bias = false;
    g.experts.activation = "gelu";
    out.push_back({"top2_glu", g, {2, 8, 8}, 31, true, 1});
    MoeLayerConfig p = top2_moe(true, SecondExpertPolicy::kSampling, 4);
    p.router.top2.expert_padding_idx = {1, 3};
    p.router.router_z_loss_weight = 0.02;
    out.push_back({"top2_expert_padding", p, {2, 8, 8}, 6, true, 3});
    MoeLayerConfig r = top2_moe(false, SecondExpertPolicy::kRandom, 3);
    r.router.sample_in_eval = true;
    out.push_back({"top2_random_sample_in_eval", r, {2, 8, 8}, 9, false, 5, true});
  }
  return out;
}

Tensor padding_mask(int64_t B, int64_t L) {
  Tensor p({B, L});
  for (int64_t i = 0; i < B * L; ++i) p[i] = i % 5 == 3 ? 1.f : 0.f;
  return p;
}

json grads_json(const std::vector<ParamRef>& params) {
  json j = json::object();
  for (const ParamRef& p : params) j[p.name] = hash(*p.grad);
  return j;
}

// Two forward/backward steps on one layer object; gradients accumulate over both.
template <class Layer>
json run_steps(Layer& layer, const LayerCase& lc) {
  json j = json::object();
  const Tensor pad = padding_mask(lc.shape[0], lc.shape[1]);
  for (uint64_t s = 0; s < 2; ++s) {
    const Tensor x = random_tensor(lc.shape, lc.seed + 100 * s);
    const Tensor dy = random_tensor(lc.shape, lc.seed + 1 + 100 * s);
    ForwardOptions opt{lc.training, lc.step + s};
    if (lc.paddings) opt.paddings = &pad;
    Tensor y, dx;
    const MoeMetrics m = layer.forward(x, y, opt);
    layer.backward(dy, dx);
    j["step" + std::to_string(s)] = {
        {"y", hash(y)}, {"dx", hash(dx)}, {"metrics", metrics_json(m)}};
  }
  j["grads"] = grads_json(layer.params());
  return j;
}

json run_layer(const LayerCase& lc) {
  if (lc.backbone) {
    MoeLayerWithBackboneConfig c;
    c.moe = lc.config;
    c.backbone.d_ff = lc.backbone_d_ff;
    MoeLayerWithBackbone layer(c);
    return run_steps(layer, lc);
  }
  MoeLayer layer(lc.config);
  return run_steps(layer, lc);
}

// ---- lingvo's gates with experts (test_gshard_gating) ------------------------------------------

json run_gate(GateInput input, bool local_dispatch, double cf) {
  Top2GatingConfig gc;
  gc.model_dim = 6;
  gc.num_experts = 3;
  gc.expert_capacity_dim = 3;
  gc.capacity_factor = cf;
  gc.init_stddev = 0.7;
  gc.seed = 5;
  gc.aux_loss_weight = 0.3;
  gc.local_dispatch = local_dispatch;
  gc.options.second_expert_policy = SecondExpertPolicy::kRandom;
  gc.options.second_expert_threshold = 0.4;
  Top2Gating gate(gc, input);
  FeedForwardExpertsConfig ec;
  ec.num_experts = 3;
  ec.d_ff = 5;
  ec.activation = "gelu";
  ec.kernel_init_stddev = 0.4;
  FeedForwardExperts experts(ec, 6, 11);
  ExpertRows rows;
  const Tensor x = random_tensor({2, 6, 6}, 41), r = random_tensor({2, 6, 6}, 42);
  const Tensor task = random_tensor({2, 6, 6}, 43);
  const std::vector<int32_t> seg = {1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 0};
  Tensor pad({2, 6});
  pad[11] = 1.f;
  json j = json::object();
  for (uint64_t s = 0; s < 2; ++s) {
    const double aux = gate.forward(x, &pad, &seg, &task, {true, s});
    Tensor y({2, 6, 6}), dx({2, 6, 6}), dcomb({12, 3}), dispatch, combine;
    experts_forward(gate.plan(), experts, x.data(), y.data(), {true, s}, rows);
    gate.dense(dispatch, combine);
    experts_backward(gate.plan(), experts, r.data(), dx.data(), rows);
    const RoutingPlan& plan = gate.plan();
    for (int64_t row = 0; row < plan.rows(); ++row)
      dcomb[plan.row_token[row] * 3 + plan.row_expert[row]] = rows.dweight[row];
    Tensor dinputs({2, 6, 6});
    gate.backward_rows(rows.dweight.data(), dinputs);
    Tensor dense_dcomb = random_tensor(combine.shape(), 44 + s), dinputs2({2, 6, 6});
    gate.backward(dense_dcomb, dinputs2);
    j["step" + std::to_string(s)] = {{"aux", aux},
                                     {"y", hash(y)},
                                     {"dx", hash(dx)},
                                     {"dcombine", hash(dcomb)},
                                     {"dispatch", hash(dispatch)},
                                     {"combine", hash(combine)},
                                     {"dinputs", hash(dinputs)},
                                     {"dinputs_dense", hash(dinputs2)}};
  }
  j["grads"] = grads_json(gate.params());
  j["expert_grads"] = grads_json(experts.params());
  return j;
}

// ---- the tiny Sparse Mixer with each router ---------------------------------------------------

json run_network(RouterType type, bool compat) {
  SparseMixerConfig c = load_model_config("tiny");
  RouterConfig& r = c.moe.router;
  r.type = type;
  r.num_selected_experts = make_policy(r)->default_k();
  if (type == RouterType::kTokensChoose) r.num_selected_experts = 2;
  r.load_balancing_loss_weight = 0.01;
  r.router_z_loss_weight = 1e-3;
  r.jitter_noise = 0.01;
  c.tf_models_compat = compat;
  c.seed = 3;
  SparseMixer net(c);
  const int64_t B = 2, L = c.max_sequence_length, H = c.hidden_size;
  Tensor ids({B, L}), mask({B, L});
  for (int64_t i = 0; i < B * L; ++i) {
    ids[i] = static_cast<float>(static_cast<int64_t>(uniform01(51, i) * 500));
    mask[i] = i % L < L - 5 ? 1.f : 0.f;
  }
  json j = json::object();
  for (uint64_t s = 0; s < 2; ++s) {
    SparseMixerInputs in;
    in.input_word_ids = &ids;
    in.input_mask = &mask;
    const SparseMixerMetrics m = net.forward(in, {true, 5 + s});
    const Tensor dseq = random_tensor({B, L, H}, 52 + s), dpool = random_tensor({B, H}, 54 + s);
    net.backward(&dseq, &dpool);
    j["step" + std::to_string(s)] = {{"sequence", hash(net.sequence_output())},
                                     {"pooled", hash(net.pooled_output())},
                                     {"metrics", m.to_json()},
                                     {"loss", m.loss}};
  }
  j["grads"] = grads_json(net.params());
  return j;
}

json record_all() {
  json out = json::object();
  for (const LayerCase& lc : layer_cases()) {
    out["layer/" + lc.name] = run_layer(lc);
  }
  for (bool local : {true, false}) {
    const std::string d = local ? "" : "_merged";
    out["gate/tokens" + d] = run_gate(GateInput::kTokens, local, 1.5);
    out["gate/sentence" + d] = run_gate(GateInput::kSentence, local, 1.5);
    out["gate/task" + d] = run_gate(GateInput::kTask, local, 1.5);
  }
  for (bool compat : {false, true}) {
    const std::string w = compat ? "_compat" : "";
    out["network/ec" + w] = run_network(RouterType::kExpertsChoose, compat);
    out["network/tc" + w] = run_network(RouterType::kTokensChoose, compat);
    out["network/top2" + w] = run_network(RouterType::kTop2, compat);
  }
  return out;
}

}  // namespace
}  // namespace sparsemoe

int main() {
  nlohmann::json out = nlohmann::json::object();
  for (int threads : {1, 2}) {
    sparsemoe::set_num_threads(threads);
    out["threads" + std::to_string(threads)] = sparsemoe::record_all();
  }
  std::cout << out.dump(1) << "\n";
  return 0;
}
