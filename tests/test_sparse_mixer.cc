// The Sparse Mixer network and its heads: the reference sources' parameter count for the Base
// preset, presets and strict configs, layer layouts, output_range, padding, the FFT path and clear
// errors. Gradients of the whole tiny network with both heads (every mixing and wiring) and
// determinism across thread counts: the harness's models/sparse_mixer cases.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/models/heads.h"
#include "sparsemoe/models/presets.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

Tensor ids_tensor(Shape shape, int64_t vocab, uint64_t seed) {
  Tensor t(shape);
  for (int64_t i = 0; i < t.numel(); ++i)
    t[i] = static_cast<float>(static_cast<int64_t>(uniform01(seed, i) * vocab) % vocab);
  return t;
}

SparseMixerConfig small_config(MixingMechanism mix, bool norm_first, bool compat) {
  SparseMixerConfig c;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.num_layers = 3;
  c.moe_layers = {1};
  c.attention_layers = {2};
  c.moe.experts.num_experts = 2;
  // Tokens-choose top-2 of 2 experts with room for every token: every token reaches both experts
  // with its two router probabilities as weights, so no token can be dropped or rerouted under a
  // finite difference, while the router still gets gradients (combine weights, z-loss).
  c.moe.router.type = RouterType::kTokensChoose;
  c.moe.router.num_selected_experts = 2;
  c.moe.router.load_balancing_loss_weight = 0.01;
  c.moe.router.router_z_loss_weight = 1e-3;
  c.moe.train_capacity_factor = c.moe.eval_capacity_factor = 4.0;
  c.mixing_mechanism = mix;
  c.num_attention_heads = 2;
  c.max_sequence_length = 4;
  c.type_vocab_size = 3;
  c.inner_dim = 6;
  c.embedding_width = 6;  // the factorised projection is exercised too
  c.initializer_range = 0.2;
  c.norm_first = norm_first;
  c.tf_models_compat = compat;
  c.seed = 10;
  return c;
}

// Seed parameter count of tf-models SparseMixer from its layer shapes (spec §12.1): embeddings,
// per layer the mixing kernels or the attention projections, the attention layer norm, the dense
// FFN with its output layer norm or the MoE (router + stacked experts; the scaffold builds no
// output layer norm around a custom feed-forward block), and the pooler.
int64_t seed_param_count(const SparseMixerConfig& c) {
  const int64_t V = c.vocab_size, H = c.hidden_size, L = c.max_sequence_length, F = c.inner_dim,
                E = c.moe.experts.num_experts, W = c.embedding_width ? c.embedding_width : H;
  int64_t n = V * W + L * W + c.type_vocab_size * W + 2 * W;  // word, position, type, LN
  if (W != H) n += W * H + H;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (c.is_attention_layer(l))
      n += 4 * (H * H + H);  // query, key, value [H, heads, H/heads] + bias; output [H, H] + bias
    else if (c.mixing_mechanism == MixingMechanism::kLinear)
      n += L * L + H * H;  // seq_kernel, hidden_kernel
    n += 2 * H;            // attention (mixing) layer norm
    if (c.is_moe_layer(l))
      n += H * E + E + E * (H * F + F + F * H + H);
    else
      n += H * F + F + F * H + H + 2 * H;
  }
  return n + H * H + H;  // pooler
}

TEST(SparseMixer, LayerLayoutsFollowThePaperCode) {
  EXPECT_EQ(layer_layout("middle", 14, 4), (std::vector<int64_t>{5, 6, 7, 8}));
  EXPECT_EQ(layer_layout("top", 14, 4), (std::vector<int64_t>{10, 11, 12, 13}));
  EXPECT_EQ(layer_layout("bottom", 14, 4), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(layer_layout("mixed", 14, 4), (std::vector<int64_t>{0, 3, 6, 9, 12}));
  EXPECT_EQ(layer_layout("middle", 8, 0), std::vector<int64_t>{});
  EXPECT_THROW(layer_layout("sideways", 14, 4), InvalidArgument);
  EXPECT_THROW(layer_layout("top", 4, 5), InvalidArgument);
}

TEST(SparseMixer, BasePresetHasTheSeedsParameterCount) {
  SparseMixerConfig base = load_model_config("sparse_mixer_base");
  // The reference sources' defaults.
  EXPECT_EQ(base.hidden_size, 512);
  EXPECT_EQ(base.num_layers, 14);
  EXPECT_EQ(base.moe_layers, (std::vector<int64_t>{5, 6, 7, 8}));
  EXPECT_EQ(base.attention_layers, (std::vector<int64_t>{10, 11, 12, 13}));
  EXPECT_EQ(base.moe.experts.num_experts, 16);
  EXPECT_EQ(base.inner_dim, 2048);
  EXPECT_EQ(base.type_vocab_size, 16);
  EXPECT_EQ(base.mixing_mechanism, MixingMechanism::kLinear);
  EXPECT_EQ(base.moe.router.type, RouterType::kExpertsChoose);
  EXPECT_EQ(base.inner_activation, "gelu_tanh");
  // The reference sources' count is that of the tf-models wiring; the paper's wiring adds the layer
  // norm after each MoE sublayer (checked on the tiny preset below, to build this 150M-parameter
  // network only once).
  base.tf_models_compat = true;
  const int64_t expected = seed_param_count(base);
  EXPECT_EQ(expected, 32000 * 512 + 512 * 512 + 16 * 512 + 1024 +                     // embeddings
                          10 * (512 * 512 * 2) + 4 * (4 * (512 * 512 + 512)) +        // mixing
                          14 * 1024 +                                                 // LN1
                          10 * (2 * 512 * 2048 + 2048 + 512 + 1024) +                 // FFN + LN2
                          4 * (512 * 16 + 16 + 16 * (2 * 512 * 2048 + 2048 + 512)) +  // MoE
                          512 * 512 + 512);                                           // pooler
  EXPECT_EQ(SparseMixer(base).count_params(), expected);
}

TEST(SparseMixer, PresetsLoadAndDescribeTheirModels) {
  for (const auto& name : preset_names()) {
    SCOPED_TRACE(name);
    const SparseMixerConfig c = load_model_config(name);
    EXPECT_EQ(SparseMixerConfig::from_json(c.to_json()).to_json(), c.to_json());  // round trip
  }
  const SparseMixerConfig fast = load_model_config("fast_sparse_mixer");
  EXPECT_EQ(fast.moe.train_capacity_factor, 0.5);
  EXPECT_EQ(fast.moe.eval_capacity_factor, 0.5);
  const SparseMixerConfig bert = load_model_config("bert_base");
  EXPECT_EQ(bert.hidden_size, 768);
  EXPECT_EQ(bert.num_layers, 12);
  EXPECT_EQ(bert.num_attention_heads, 12);
  EXPECT_EQ(bert.inner_dim, 3072);
  EXPECT_EQ(bert.attention_layers.size(), 12u);
  EXPECT_TRUE(bert.moe_layers.empty());
  EXPECT_EQ(SparseMixer(bert).count_params(), seed_param_count(bert));
  const SparseMixerConfig fnet = load_model_config("fnet_base");
  EXPECT_EQ(fnet.mixing_mechanism, MixingMechanism::kFourier);
  EXPECT_TRUE(fnet.attention_layers.empty() && fnet.moe_layers.empty());
  SparseMixerConfig tiny = load_model_config("tiny");
  EXPECT_EQ(SparseMixer(tiny).count_params(), seed_param_count(tiny) + 2 * 2 * 64);  // 2 MoE LN2
  tiny.tf_models_compat = true;
  EXPECT_EQ(SparseMixer(tiny).count_params(), seed_param_count(tiny));
  EXPECT_THROW(load_model_config("no_such_preset"), InvalidArgument);
}

TEST(SparseMixer, ConfigErrorsNameTheKey) {
  nlohmann::json j = preset_json("tiny");
  auto message = [](const nlohmann::json& bad) {
    try {
      SparseMixerConfig::from_json(bad);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  nlohmann::json bad = j;
  bad["hidden_sise"] = 8;
  EXPECT_NE(message(bad).find("unknown key 'hidden_sise'"), std::string::npos) << message(bad);
  bad = j;
  bad["moe_layers"] = {1, 7};
  EXPECT_NE(message(bad).find("moe_layers: layer 7 outside [0, num_layers=4)"), std::string::npos)
      << message(bad);
  // The keys the network sets are refused inside "moe", naming who sets them; keys moved into
  // "moe" name their new place.
  bad = j;
  bad["moe"]["router"] = {{"num_experts", 3}};
  EXPECT_EQ(message(bad),
            "SparseMixerConfig.moe.router.num_experts: set by experts.num_experts, not here");
  bad = j;
  bad["moe"]["experts"]["d_ff"] = 3;
  EXPECT_NE(message(bad).find("SparseMixerConfig.moe.experts.d_ff: set by the network"),
            std::string::npos)
      << message(bad);
  bad = j;
  bad["moe"]["router"] = {{"kernel_init_stddev", 0.1}};
  EXPECT_NE(message(bad).find("moe.router.kernel_init_stddev: set by the network"),
            std::string::npos)
      << message(bad);
  bad = j;
  bad["num_experts"] = 8;
  EXPECT_EQ(message(bad), "SparseMixerConfig: 'num_experts' is now 'moe.experts.num_experts'");
  bad = j;
  bad["moe"]["router"] = {{"jitter_noise", 1.5}};
  EXPECT_NE(message(bad).find("jitter_noise: expected in [0, 1), got 1.5"), std::string::npos)
      << message(bad);
  // Every MoE option is settable from the network config, those a network could not set before
  // included.
  nlohmann::json all = j;
  all["moe"]["dropless"] = true;
  all["moe"]["router"] = {{"type", "tokens_choose"}, {"num_selected_experts", 2}};
  all["moe"]["experts"]["glu"] = true;
  all["moe"]["experts"]["inner_dropout"] = 0.25;
  all["moe"]["expert_capacity_dim"] = 3;
  const SparseMixerConfig sc = SparseMixerConfig::from_json(all);
  const MoeLayerConfig layer = sc.moe_layer(1);
  EXPECT_TRUE(layer.dropless);
  EXPECT_TRUE(layer.experts.glu);
  EXPECT_EQ(layer.experts.inner_dropout, 0.25);
  EXPECT_EQ(layer.expert_capacity_dim, 3);
  EXPECT_EQ(layer.router.num_selected_experts, 2);
  EXPECT_EQ(layer.experts.d_ff, sc.inner_dim);  // set by the network
  EXPECT_EQ(layer.router.num_experts, layer.experts.num_experts);
  bad = j;
  bad["mixing_mechanism"] = "wavelet";
  EXPECT_NE(message(bad).find("wavelet"), std::string::npos);
  bad = j;
  bad["attention_layers"] = {{"layout", "top"}};
  EXPECT_NE(message(bad).find("'count'"), std::string::npos) << message(bad);
  bad = j;
  bad["num_attention_heads"] = 5;
  EXPECT_NE(message(bad).find("divisible by num_attention_heads"), std::string::npos);
  bad = j;
  bad["hidden_size"] = "big";
  EXPECT_NE(message(bad).find("hidden_size: expected an integer, got string"), std::string::npos)
      << message(bad);
  bad = j;
  bad["moe_layers"] = {{"layout", "middle"}, {"count", 2}};
  EXPECT_EQ(SparseMixerConfig::from_json(bad).moe_layers, (std::vector<int64_t>{1, 2}));
  // A config file that is not JSON.
  const std::string path = testing::TempDir() + "/bad_model.json";
  std::ofstream(path) << "{ \"vocab_size\": ";
  EXPECT_THROW(load_model_config(path), ConfigError);
}

TEST(SparseMixer, InputErrorsAreClear) {
  SparseMixer net(small_config(MixingMechanism::kLinear, false, false));
  auto message = [&](const SparseMixerInputs& in) {
    try {
      net.forward(in);
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Tensor short_ids({2, 3}, 1.f), ids({2, 4}, 1.f);
  EXPECT_NE(message({&short_ids}).find("must equal max_sequence_length=4"), std::string::npos);
  Tensor big = ids;
  big[5] = 11;
  EXPECT_NE(message({&big}).find("input_word_ids"), std::string::npos) << message({&big});
  const Tensor bad_mask({2, 4}, 0.5f);
  EXPECT_NE(message({&ids, &bad_mask}).find("input_mask: expected 0 or 1"), std::string::npos);
  const Tensor types({2, 4}, 3.f);
  EXPECT_NE(message({&ids, nullptr, &types}).find("input_type_ids"), std::string::npos);
  const Tensor dense({2, 1, 6}, 0.f);
  EXPECT_NE(message({&short_ids, nullptr, nullptr, &dense}).find("with_dense_inputs=false"),
            std::string::npos);
}

TEST(SparseMixer, OutputRangeSlicesTheSequenceAndCompatIgnoresIt) {
  SparseMixerConfig c = small_config(MixingMechanism::kFourier, false, false);
  c.output_range = 2;
  const Tensor ids({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  SparseMixer net(c);
  net.forward({&ids});
  EXPECT_EQ(net.sequence_output().shape(), (Shape{2, 2, 8}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 16; ++i)
      EXPECT_EQ(net.sequence_output()[b * 16 + i], net.encoder_output(2)[b * 32 + i]);
  c.tf_models_compat = true;  // tf-models filters output_range away before the scaffold
  SparseMixer compat(c);
  compat.forward({&ids});
  EXPECT_EQ(compat.sequence_output().shape(), (Shape{2, 4, 8}));
}

TEST(SparseMixer, MetricsArePerMoeLayerAndTotalled) {
  SparseMixerConfig c = load_model_config("tiny");
  c.moe.router.router_z_loss_weight = 0.5;
  SparseMixer net(c);
  const Tensor ids = ids_tensor({2, 32}, c.vocab_size, 3);
  const SparseMixerMetrics m = net.forward({&ids}, {true, 1});
  ASSERT_EQ(m.moe_layer_index, (std::vector<int64_t>{1, 2}));
  ASSERT_EQ(m.per_layer.size(), 2u);
  EXPECT_DOUBLE_EQ(m.router_z_loss, m.per_layer[0].router_z_loss + m.per_layer[1].router_z_loss);
  EXPECT_DOUBLE_EQ(m.loss, m.per_layer[0].loss + m.per_layer[1].loss);
  EXPECT_GT(m.router_z_loss, 0.0);
  EXPECT_DOUBLE_EQ(m.router_confidence,
                   (m.per_layer[0].router_confidence + m.per_layer[1].router_confidence) / 2);
  EXPECT_EQ(m.load_balancing_loss, 0.0);  // experts-choose
  EXPECT_EQ(m.expert_usage, 1.0);
  const nlohmann::json j = m.to_json();
  EXPECT_TRUE(j.contains("layer_1") && j.contains("layer_2") && j.contains("total"));
  EXPECT_TRUE(j["layer_2"].contains("fraction_tokens_left_behind"));
  c.export_metrics = false;
  SparseMixer quiet(c);
  const SparseMixerMetrics q = quiet.forward({&ids}, {true, 1});
  EXPECT_TRUE(q.per_layer.empty());
  EXPECT_EQ(q.loss, m.loss);  // the losses still count
}

TEST(SparseMixer, PaddedTokensNeverReachRealOnesThroughAttention) {
  // All-attention, dense FFN: changing a padded token changes no real token's output.
  SparseMixerConfig c = small_config(MixingMechanism::kLinear, false, false);
  c.moe_layers = {};
  c.attention_layers = {0, 1, 2};
  SparseMixer net(c);
  Tensor ids({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  const Tensor mask({2, 4}, {1, 1, 0, 0, 1, 1, 1, 0});
  net.forward({&ids, &mask});
  const Tensor before = net.encoder_output(2);
  ids[2] = 9, ids[3] = 10, ids[7] = 0;
  net.forward({&ids, &mask});
  const Tensor& after = net.encoder_output(2);
  for (int64_t t : {0, 1, 4, 5, 6})
    for (int64_t h = 0; h < 8; ++h) EXPECT_EQ(after[t * 8 + h], before[t * 8 + h]) << t;
  EXPECT_NE(after[2 * 8], before[2 * 8]);  // the padded token itself did change
}

TEST(SparseMixer, FftPathEqualsTheDftMatrixPath) {
  for (MixingMechanism mix : {MixingMechanism::kFourier, MixingMechanism::kHartley}) {
    SparseMixerConfig c = load_model_config("tiny");
    c.mixing_mechanism = mix;
    SparseMixer dft(c);
    c.use_fft = true;
    SparseMixer fft(c);
    const Tensor ids = ids_tensor({2, 32}, c.vocab_size, 5);
    dft.forward({&ids});
    fft.forward({&ids});
    EXPECT_LT(test::normalized_error(fft.sequence_output(), dft.sequence_output()), 1e-4)
        << mixing_mechanism_name(mix);
  }
}

// Weights packed once for inference give the same bits as packing per call, and a packed copy is
// never used after the weights may have changed: params() hands out writable views and backward
// precedes an optimizer step, so both drop it.
TEST(SparseMixer, PreparedInferenceGivesTheSameBitsAndNeverGoesStale) {
  SparseMixerConfig c = load_model_config("tiny");
  c.embedding_width = 48;    // the embedding projection is a packed Dense too
  c.moe.experts.glu = true;  // W1 [H, 2F]: the linear half starts at column F
  SparseMixer prepared(c), plain(c);
  const Tensor ids = ids_tensor({8, 32}, c.vocab_size, 6);  // 256 rows: 64 per expert, not few
  auto same_outputs = [&](const char* when) {
    prepared.forward({&ids});
    plain.forward({&ids});
    for (const auto& [a, b] : {std::pair{&prepared.sequence_output(), &plain.sequence_output()},
                               {&prepared.pooled_output(), &plain.pooled_output()}})
      for (int64_t i = 0; i < a->numel(); ++i) ASSERT_EQ((*a)[i], (*b)[i]) << when << " " << i;
  };
  auto nudge = [](std::vector<ParamRef> refs) {
    for (auto& r : refs) {
      for (int64_t i = 0; i < r.value->numel(); ++i) (*r.value)[i] += 0.01f * ((i % 7) - 3);
    }
  };
  const int64_t bytes = prepared.prepare_inference();
  if (kernel_gemm_native()) {
    EXPECT_GT(bytes, 0);
  }
  same_outputs("after prepare_inference");
  // Views handed out after packing: the copy is dropped, the new weights are used.
  prepared.prepare_inference();
  nudge(prepared.params());
  nudge(plain.params());
  same_outputs("after writing through params()");
  // Views taken before packing, written after a backward (as an optimizer does).
  const std::vector<ParamRef> held = prepared.params();
  prepared.prepare_inference();
  prepared.forward({&ids});
  Tensor dpooled(prepared.pooled_output().shape(), 1.f);
  prepared.backward(nullptr, &dpooled);
  nudge(held);
  nudge(plain.params());
  same_outputs("after a backward and an update");
}

// ForwardOptions::save_for_backward = false (inference, like no_grad): the dense layers write
// their outputs directly and keep no input copies; the same bits, and a backward is refused.
TEST(SparseMixer, ForwardWithoutSavingGivesTheSameBitsAndRefusesABackward) {
  for (const bool glu : {false, true}) {
    SparseMixerConfig c = load_model_config("tiny");  // mixing, MoE, attention and dense FFNs
    c.embedding_width = 48;                           // the embedding projection too
    c.moe.experts.glu = glu;
    SparseMixer saving(c), inference(c);
    const Tensor ids = ids_tensor({4, 32}, c.vocab_size, 7);
    Tensor mask({4, 32}, 1.f);
    for (int64_t l = 20; l < 32; ++l) mask[l] = 0.f;  // padding in the first sequence
    saving.forward({&ids, &mask}, {.training = false});
    inference.forward({&ids, &mask}, {.training = false, .save_for_backward = false});
    for (const auto& [a, b] : {std::pair{&saving.sequence_output(), &inference.sequence_output()},
                               {&saving.pooled_output(), &inference.pooled_output()}}) {
      ASSERT_EQ(a->shape(), b->shape());
      for (int64_t i = 0; i < a->numel(); ++i)
        ASSERT_EQ((*a)[i], (*b)[i]) << "glu " << glu << " " << i;
    }
    Tensor dpooled(inference.pooled_output().shape(), 1.f);
    const Tensor dseq = random_tensor(inference.sequence_output().shape(), 8);
    zero_grads(inference.params());
    // Refused before anything is written: the top block's layer norm would otherwise add into
    // its gradients before the FFN below it found nothing saved.
    for (const bool with_pooled : {false, true}) {
      try {
        inference.backward(&dseq, with_pooled ? &dpooled : nullptr);
        ADD_FAILURE() << "backward after a forward that saved nothing";
      } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("save_for_backward"), std::string::npos) << e.what();
      }
      for (const ParamRef& p : inference.params())
        for (int64_t j = 0; j < p.grad->numel(); ++j)
          ASSERT_EQ((*p.grad)[j], 0.f) << p.name << " written by a refused backward";
    }
    // A saving forward afterwards makes the backward possible again, with the saving net's bits.
    inference.forward({&ids, &mask}, {.training = false});
    zero_grads(saving.params());
    inference.backward(&dseq, &dpooled);
    saving.backward(&dseq, &dpooled);
    const auto pa = saving.params(), pb = inference.params();
    for (size_t i = 0; i < pa.size(); ++i)
      for (int64_t j = 0; j < pa[i].grad->numel(); ++j)
        ASSERT_EQ((*pa[i].grad)[j], (*pb[i].grad)[j]) << pa[i].name;
  }
}

TEST(Heads, SoftmaxCrossEntropyMatchesHandComputation) {
  const Tensor logits({2, 3}, {1, 2, 3, 0, 0, 0});
  const float w[2] = {1, 3};
  Tensor d;
  double correct = 0;
  const double loss = softmax_cross_entropy(logits, {2, 1}, w, &d, &correct);
  const double ce0 = std::log(std::exp(1.) + std::exp(2.) + std::exp(3.)) - 3, ce1 = std::log(3.);
  EXPECT_NEAR(loss, (ce0 + 3 * ce1) / 4, 1e-6);
  EXPECT_NEAR(d[4], 3.0 / 4 * (1.0 / 3 - 1), 1e-6);
  EXPECT_EQ(correct, 1.0);  // row 0 right; row 1 is a three-way tie, argmax picks class 0
  const float zero[2] = {0, 0};
  EXPECT_EQ(softmax_cross_entropy(logits, {2, 1}, zero, &d), 0.0);
  EXPECT_THROW(softmax_cross_entropy(logits, {3, 1}, nullptr, nullptr), InvalidArgument);
}

TEST(Heads, MaskedLmPositionsAreChecked) {
  MaskedLmHead head(8, 8, 5, Activation::kGelu, 0.02, 1);
  const Tensor seq({1, 4, 8}), table({5, 8});
  Tensor logits;
  EXPECT_THROW(head.forward(seq, Tensor({1, 2}, {0, 4}), table, logits), InvalidArgument);
  EXPECT_THROW(head.forward(seq, Tensor({1, 2}, {0, 1}), Tensor({6, 8}), logits), InvalidArgument);
  head.forward(seq, Tensor({1, 2}, {0, 3}), table, logits);
  EXPECT_EQ(logits.shape(), (Shape{1, 2, 5}));
}

}  // namespace
}  // namespace sparsemoe
