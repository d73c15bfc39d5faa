// The registered cases (see cases.h). Each MoE case is one configuration the tests used before
// the harness existed, with the same inputs, so the finite-difference checks keep their
// tie-free inputs; the reference mode now runs on every MoE case.
#include "sparsemoe/cases/cases.h"

#include <string>
#include <utility>

#include "sparsemoe/core/rng.h"
#include "sparsemoe/lingvo/gather_k.h"
#include "sparsemoe/lingvo/gshard_gating.h"
#include "sparsemoe/lingvo/shared_embedding_softmax.h"
#include "sparsemoe/models/encoder_block.h"
#include "sparsemoe/models/heads.h"
#include "sparsemoe/models/presets.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/moe/dispatch.h"
#include "sparsemoe/moe/experts.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/nn/attention.h"
#include "sparsemoe/nn/dense.h"
#include "sparsemoe/nn/embeddings.h"
#include "sparsemoe/nn/feed_forward.h"
#include "sparsemoe/nn/layer_norm.h"
#include "sparsemoe/nn/mixing.h"
#include "sparsemoe/reference/moe_reference.h"

namespace sparsemoe::cases {

Tensor random_input(Shape shape, uint64_t seed, float lo, float hi) {
  Tensor t(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = lo + (hi - lo) * uniform01(seed, i);
  return t;
}

namespace {

// A layer with forward(x, y, opt) and backward(dy, dx) on one input.
template <class Layer>
class LayerSubject : public Subject {
 public:
  template <class... A>
  LayerSubject(Tensor x, A&&... args) : layer(std::forward<A>(args)...), x_(std::move(x)) {}
  double forward(const ForwardOptions& opt) override {
    if constexpr (requires { layer.forward(x_, y_, opt).loss; }) {
      ForwardOptions o = opt;
      if (paddings.numel()) o.paddings = &paddings;
      metrics = layer.forward(x_, y_, o);
      return metrics.loss;
    } else if constexpr (requires { layer.forward(x_, y_, opt); }) {
      layer.forward(x_, y_, opt);
    } else if constexpr (requires { layer.forward(x_, &mask, y_, opt).loss; }) {
      metrics = layer.forward(x_, mask.numel() ? &mask : nullptr, y_, opt);
      return metrics.loss;
    } else if constexpr (requires { layer.forward(x_, &mask, y_, opt); }) {
      layer.forward(x_, mask.numel() ? &mask : nullptr, y_, opt);
    } else {
      layer.forward(x_, y_);
    }
    return 0;
  }
  std::vector<const Tensor*> outputs() override { return {&y_}; }
  void backward(const std::vector<Tensor>& douts) override {
    if constexpr (requires { layer.backward(douts.at(0), &dx_); })
      layer.backward(douts.at(0), &dx_);
    else
      layer.backward(douts.at(0), dx_);
  }
  std::vector<Tensor*> inputs() override { return {&x_}; }
  std::vector<const Tensor*> input_grads() override { return {&dx_}; }
  std::vector<ParamRef> params() override { return layer.params(); }

  Layer layer;
  Tensor paddings;  // [B, L] for top2 cases, else empty
  Tensor mask;      // [B, L, L] for attention cases, else empty
  MoeMetrics metrics;

 private:
  Tensor x_, y_, dx_;
};

using MoeSubject = LayerSubject<MoeLayer>;

// Embeddings with token ids, type ids and dense inputs (the differentiable input).
class EmbeddingsSubject : public Subject {
 public:
  explicit EmbeddingsSubject(const EmbeddingsConfig& c)
      : emb(c), dense_(random_input({2, 2, 4}, 3)) {}
  double forward(const ForwardOptions& opt) override {
    emb.forward(ids_, types_, &dense_, &dtypes_, out_, opt);
    return 0;
  }
  std::vector<const Tensor*> outputs() override { return {&out_}; }
  void backward(const std::vector<Tensor>& douts) override { emb.backward(douts.at(0), &ddense_); }
  std::vector<Tensor*> inputs() override { return {&dense_}; }
  std::vector<const Tensor*> input_grads() override { return {&ddense_}; }
  std::vector<ParamRef> params() override { return emb.params(); }
  Embeddings emb;

 private:
  Tensor ids_{{2, 3}, {1, 2, 2, 10, 0, 7}}, types_{{2, 3}, {0, 1, 2, 2, 2, 0}};
  Tensor dense_, dtypes_{{2, 2}, {1, 0, 2, 1}}, out_, ddense_;
};

// lingvo's shared embedding-softmax. kLoss: the loss of an activation [2, 5, 4] against labels
// (the objective is the loss alone); kLookup: the embedding lookup of ids and positions.
class SharedSoftmaxSubject : public Subject {
 public:
  enum Part { kLoss, kLookup };
  SharedSoftmaxSubject(const SharedEmbeddingSoftmaxConfig& c, Part part)
      : layer(c), part_(part), act_(random_input({2, 5, 4}, 11, -2.f, 2.f)) {}
  double forward(const ForwardOptions&) override {
    if (part_ == kLookup) {
      layer.forward(ids_, pos_, out_);
      return 0;
    }
    return layer.compute_loss(act_, labels_, seg_).loss();
  }
  std::vector<const Tensor*> outputs() override {
    if (part_ == kLookup) return {&out_};
    return {};
  }
  void backward(const std::vector<Tensor>& douts) override {
    if (part_ == kLookup)
      layer.backward(douts.at(0));
    else
      layer.compute_loss_backward(1.0, dact_);
  }
  std::vector<Tensor*> inputs() override {
    if (part_ == kLookup) return {};
    return {&act_};
  }
  std::vector<const Tensor*> input_grads() override {
    if (part_ == kLookup) return {};
    return {&dact_};
  }
  std::vector<ParamRef> params() override { return layer.params(); }
  SharedEmbeddingSoftmax layer;

 private:
  Part part_;
  Tensor act_, dact_, out_;
  Tensor labels_{{2, 5}, {1, 0, 6, 3, 3, 2, 5, 4, 0, 1}},
      seg_{{2, 5}, {1, 1, 1, 0, 0, 2, 2, 2, 2, 2}};
  Tensor ids_{{2, 3}, {1, 6, 1, 0, 2, 3}}, pos_{{2, 3}, {0, 1, 2, 0, 1, 4}};
};

Top2GatingConfig gate_config() {
  Top2GatingConfig c;
  c.model_dim = 5;
  c.num_experts = 4;
  c.expert_capacity_dim = 3;
  c.init_stddev = 0.7;
  c.seed = 5;
  return c;
}

// lingvo's Top2Gating on [2, 6, 5] inputs (tokens, sentences by segment id, or task embeddings):
// the output is the dense combine [G, S, E, C]; the added loss the weighted aux loss. Inputs
// (seed 27) keep every routing decision clear of a tie within a difference step.
class GateSubject : public Subject {
 public:
  GateSubject(const Top2GatingConfig& c, GateInput kind)
      : gate(c, kind),
        kind_(kind),
        weight_(c.aux_loss_weight),
        x_(random_input({2, 6, 5}, 27)),
        task_(random_input({2, 6, 5}, 8)) {}
  double forward(const ForwardOptions& opt) override {
    const double aux = gate.forward(x_, nullptr, &seg_, &task_, opt);
    gate.dense(dispatch_, combine_);
    return weight_ * aux;
  }
  std::vector<const Tensor*> outputs() override { return {&combine_}; }
  void backward(const std::vector<Tensor>& douts) override {
    dx_ = Tensor({2, 6, 5});  // backward adds into it
    gate.backward(douts.at(0), dx_);
  }
  std::vector<Tensor*> inputs() override { return {kind_ == GateInput::kTask ? &task_ : &x_}; }
  std::vector<const Tensor*> input_grads() override { return {&dx_}; }
  std::vector<ParamRef> params() override { return gate.params(); }
  Top2Gating gate;

 private:
  GateInput kind_;
  double weight_;
  Tensor x_, task_, dx_, dispatch_, combine_;
  std::vector<int32_t> seg_ = {1, 1, 2, 2, 2, 0, 3, 4, 4, 5, 5, 5};
};

// lingvo's SentenceTop2Gating feeding FeedForwardNetworksApplyGating (experts_forward): inputs
// -> sentence gate -> experts on the routed rows -> combine. kEinsum computes the same by the
// reference sources' einsums over the gate's dense tensors and FeedForwardExperts' dense API.
class GatedExpertsSubject : public Subject {
 public:
  enum Path { kSparse, kEinsum };
  GatedExpertsSubject(Path path, const FeedForwardExpertsConfig& ec)
      : gate(config(), GateInput::kSentence),
        experts(ec, 6, 11),
        path_(path),
        x_(random_input({2, 6, 6}, 41)) {}
  static Top2GatingConfig config() {
    Top2GatingConfig c = gate_config();
    c.model_dim = 6;
    c.num_experts = 3;
    c.aux_loss_weight = 0.1;
    return c;
  }
  double forward(const ForwardOptions& opt) override {
    const double aux = gate.forward(x_, nullptr, &seg_, nullptr, opt);
    y_ = Tensor({2, 6, 6});
    if (path_ == kSparse) {
      experts_forward(gate.plan(), experts, x_.data(), y_.data(), opt, rows_);
      return 0.1 * aux;
    }
    gate.dense(dispatch_, combine_);
    const int64_t G = dispatch_.dim(0), S = dispatch_.dim(1), E = 3, C = dispatch_.dim(3), M = 6;
    expert_in_ = Tensor({G, E, C, M});
    for (int64_t g = 0; g < G; ++g)  // gsec,gsm->gecm
      for (int64_t e = 0; e < E; ++e)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t m = 0; m < M; ++m) {
            double acc = 0;
            for (int64_t s = 0; s < S; ++s)
              acc += dispatch_[((g * S + s) * E + e) * C + c] * x_[(g * S + s) * M + m];
            expert_in_[((g * E + e) * C + c) * M + m] = static_cast<float>(acc);
          }
    experts.forward(expert_in_, expert_out_, opt);
    for (int64_t g = 0; g < G; ++g)  // gsec,gecm->gsm
      for (int64_t s = 0; s < S; ++s)
        for (int64_t m = 0; m < M; ++m) {
          double acc = 0;
          for (int64_t e = 0; e < E; ++e)
            for (int64_t c = 0; c < C; ++c)
              acc += combine_[((g * S + s) * E + e) * C + c] *
                     expert_out_[((g * E + e) * C + c) * M + m];
          y_[(g * S + s) * M + m] = static_cast<float>(acc);
        }
    return 0.1 * aux;
  }
  std::vector<const Tensor*> outputs() override { return {&y_}; }
  void backward(const std::vector<Tensor>& douts) override {
    dx_ = Tensor({2, 6, 6});
    if (path_ == kSparse) {
      experts_backward(gate.plan(), experts, douts.at(0).data(), dx_.data(), rows_);
      gate.backward_rows(rows_.dweight.data(), dx_);  // adds the path through the gate
      return;
    }
    // The einsum path's backward is not needed: the reference mode compares forwards, and
    // gradients against the sparse path; this subject is forward-only.
    throw InvalidArgument("GatedExpertsSubject: the einsum path has no backward");
  }
  std::vector<Tensor*> inputs() override { return {&x_}; }
  std::vector<const Tensor*> input_grads() override { return {&dx_}; }
  std::vector<ParamRef> params() override {
    std::vector<ParamRef> p = gate.params();
    for (auto& r : experts.params()) p.push_back(r);
    return p;
  }
  Top2Gating gate;
  FeedForwardExperts experts;

 private:
  Path path_;
  Tensor x_, y_, dx_, dispatch_, combine_, expert_in_, expert_out_;
  ExpertRows rows_;
  std::vector<int32_t> seg_ = {1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 4};
};

// lingvo's GatherK on values [5, 4, 3]: an op without parameters.
class GatherKSubject : public Subject {
 public:
  GatherKSubject() : values_(random_input({5, 4, 3}, 1)) {
    Tensor padding;
    index_ = gather_k_index(
        Tensor({5, 4}, {0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1}), 2, padding);
  }
  double forward(const ForwardOptions&) override {
    gather_k(index_, values_, out_);
    return 0;
  }
  std::vector<const Tensor*> outputs() override { return {&out_}; }
  void backward(const std::vector<Tensor>& douts) override {
    dvalues_ = Tensor(values_.shape());  // gather_k_backward accumulates
    gather_k_backward(index_, douts.at(0), dvalues_);
  }
  std::vector<Tensor*> inputs() override { return {&values_}; }
  std::vector<const Tensor*> input_grads() override { return {&dvalues_}; }
  std::vector<ParamRef> params() override { return {}; }

 private:
  GatherKIndex index_;
  Tensor values_, out_, dvalues_;
};

// The tiny Sparse Mixer with a masked-LM head and a classification head on top, dense inputs
// appended; the added loss is both heads' cross-entropies and the MoE losses.
class NetworkSubject : public Subject {
 public:
  explicit NetworkSubject(const SparseMixerConfig& c)
      : net(c),
        mlm_(8, 6, 11, Activation::kGeluTanh, 0.3, 21),
        cls_(8, 3, 0.1, 0.3, 22),
        dense_(random_input({2, 1, 6}, 30, -0.5f, 0.5f)) {}
  double forward(const ForwardOptions& opt) override {
    const SparseMixerInputs in{&ids_, &mask_, &types_, &dense_, &dmask_, &dtypes_};
    const SparseMixerMetrics met = net.forward(in, opt);
    mlm_.forward(net.sequence_output(), positions_, net.embeddings().word, mlm_logits_);
    cls_.forward(net.pooled_output(), cls_logits_, opt);
    return softmax_cross_entropy(mlm_logits_, {3, 5, 0, 9}, mlm_w_.data(), &dmlm_) +
           softmax_cross_entropy(cls_logits_, {1, 2}, nullptr, &dcls_) + met.loss;
  }
  std::vector<const Tensor*> outputs() override {
    return {&net.sequence_output(), &net.pooled_output()};
  }
  void backward(const std::vector<Tensor>& douts) override {
    // Heads first: their gradients flow into the sequence output (MLM) and the pooled output.
    Tensor dseq = douts.at(0), dpooled;
    mlm_.backward(dmlm_, net.embeddings().word, dseq, net.embeddings().word_grad);
    cls_.backward(dcls_, dpooled);
    for (int64_t i = 0; i < dpooled.numel(); ++i) dpooled[i] += douts.at(1)[i];
    net.backward(&dseq, &dpooled, &ddense_);
  }
  std::vector<Tensor*> inputs() override { return {&dense_}; }
  std::vector<const Tensor*> input_grads() override { return {&ddense_}; }
  std::vector<ParamRef> params() override {
    std::vector<ParamRef> p = net.params();
    for (auto& r : mlm_.params()) p.push_back(r);
    for (auto& r : cls_.params()) p.push_back(r);
    return p;
  }
  SparseMixer net;

 private:
  MaskedLmHead mlm_;
  ClassificationHead cls_;
  Tensor ids_{{2, 3}, {1, 4, 7, 2, 10, 0}}, types_{{2, 3}, {0, 1, 2, 1, 0, 0}};
  Tensor mask_{{2, 3}, {1, 1, 0, 1, 1, 1}}, dmask_{{2, 1}, {1, 1}};
  Tensor dtypes_{{2, 1}, {2, 0}}, positions_{{2, 2}, {0, 1, 1, 1}}, mlm_w_{{4}, {1, 1, 0, 1}};
  Tensor dense_, ddense_, mlm_logits_, cls_logits_, dmlm_, dcls_;
};

// The network's input ids only: the tiny preset at its full length, for determinism.
class TinyNetworkSubject : public Subject {
 public:
  TinyNetworkSubject() : net(load_model_config("tiny")), ids_({3, 32}) {
    for (int64_t i = 0; i < ids_.numel(); ++i)
      ids_[i] = static_cast<float>(static_cast<int64_t>(uniform01(8, i) * 512) % 512);
  }
  double forward(const ForwardOptions& opt) override { return net.forward({&ids_}, opt).loss; }
  std::vector<const Tensor*> outputs() override {
    return {&net.sequence_output(), &net.pooled_output()};
  }
  void backward(const std::vector<Tensor>& douts) override {
    net.backward(&douts.at(0), &douts.at(1));
  }
  std::vector<Tensor*> inputs() override { return {}; }
  std::vector<const Tensor*> input_grads() override { return {}; }
  std::vector<ParamRef> params() override { return net.params(); }
  SparseMixer net;

 private:
  Tensor ids_;
};
using MoeReferenceSubject = LayerSubject<MoeReference>;

MoeLayerConfig small_moe(RouterType type, int64_t k, double cf) {
  MoeLayerConfig c;
  c.hidden_size = 8;
  c.experts.num_experts = c.router.num_experts = 4;
  c.experts.d_ff = 12;
  c.experts.activation = "gelu";
  c.router.type = type;
  c.router.num_selected_experts = type == RouterType::kTop2 ? 2 : k;
  c.train_capacity_factor = c.eval_capacity_factor = cf;
  c.seed = 1234;
  c.router.kernel_init_stddev = 0.5;  // spread-out router probabilities
  c.experts.kernel_init_stddev = 0.3;
  return c;
}

MoeLayerConfig top2_moe(bool legacy, SecondExpertPolicy p) {
  MoeLayerConfig c = small_moe(RouterType::kTop2, 2, 0.0);
  c.router.use_bias = false;  // lingvo's gate
  c.router.top2.legacy_mtf_behavior = legacy;
  c.router.top2.second_expert_policy = p;
  c.router.top2.second_expert_threshold = 0.5;
  c.expert_capacity_dim = 3;
  c.experts.activation = "relu";
  return c;
}

Tensor padding_mask(int64_t B, int64_t L) {
  Tensor p({B, L});
  for (int64_t i = 0; i < B * L; ++i) p[i] = i % 5 == 3 ? 1.f : 0.f;
  return p;
}

// Forward FLOPs of the experts on the rows the last forward routed, for the bench.
double moe_flops(const MoeLayerConfig& c, Subject& s) {
  const auto* fast = dynamic_cast<MoeSubject*>(&s);
  if (!fast) return 0;
  const double F1 = c.experts.glu ? 2.0 * c.experts.d_ff : c.experts.d_ff;
  return 2.0 * fast->layer.plan().rows() * c.hidden_size * (F1 + c.experts.d_ff);
}

// A MoE case: the layer on input x (shape, seed), with its reference and its bad inputs.
Case moe_case(std::string name, MoeLayerConfig c, Shape shape, uint64_t x_seed, bool pad = false) {
  Case k;
  k.name = std::move(name);
  k.make = [=] {
    auto s = std::make_unique<MoeSubject>(random_input(shape, x_seed), c);
    if (pad) s->paddings = padding_mask(shape[0], shape[1]);
    return s;
  };
  k.reference = [=](Subject& fast) -> std::unique_ptr<Subject> {
    auto s = std::make_unique<MoeReferenceSubject>(random_input(shape, x_seed), c);
    if (pad) s->paddings = padding_mask(shape[0], shape[1]);
    s->layer.copy_weights(fast.params());
    return s;
  };
  const int64_t H = c.hidden_size;
  k.errors = {
      {"x of the wrong width",
       [=] {
         MoeLayer m(c);
         Tensor y;
         m.forward(Tensor({shape[0], shape[1], H + 1}), y);
       },
       "InvalidArgument", "MoeLayer input: expected shape [B, L, H=" + std::to_string(H) + "]"},
      {"backward before forward",
       [=] {
         MoeLayer m(c);
         Tensor dx;
         m.backward(Tensor(shape), dx);
       },
       "InvalidArgument", "call forward first"},
      {"dy of the wrong shape",
       [=] {
         MoeLayer m(c);
         Tensor y, dx;
         ForwardOptions o;
         Tensor p = padding_mask(shape[0], shape[1]);
         if (pad) o.paddings = &p;
         m.forward(random_input(shape, 1), y, o);
         m.backward(Tensor({shape[0], shape[1] + 1, H}), dx);
       },
       "InvalidArgument", "argument 'dy'"},
      {"negative capacity factor",
       [=] {
         MoeLayerConfig bad = c;
         bad.train_capacity_factor = -1;
         MoeLayer m(bad);
       },
       "ConfigError", "train_capacity_factor: expected >= 0, got -1"},
  };
  k.flops = [c](Subject& s) { return moe_flops(c, s); };
  return k;
}

std::vector<Case> build() {
  std::vector<Case> all;

  // MoE layers with capacity drops, dropout, jitter and both losses: gradients and reference.
  struct Grad {
    const char* name;
    RouterType type;
    int64_t k;
    double cf;
    bool bpr;
  };
  for (const Grad& g : {Grad{"ec", RouterType::kExpertsChoose, 1, 0.5, false},
                        Grad{"tc1", RouterType::kTokensChoose, 1, 0.5, false},
                        Grad{"tc1_bpr", RouterType::kTokensChoose, 1, 0.5, true},
                        Grad{"tc2", RouterType::kTokensChoose, 2, 0.75, true}}) {
    MoeLayerConfig c = small_moe(g.type, g.k, g.cf);
    c.router.batch_prioritized_routing = g.bpr;
    c.router.jitter_noise = 0.05;
    c.router.router_z_loss_weight = 0.05;
    c.router.load_balancing_loss_weight = 0.2;
    c.experts.inner_dropout = 0.1;
    c.experts.output_dropout = 0.1;
    Case k = moe_case(std::string("moe/drops/") + g.name, c, {2, 8, 8}, 21);
    k.dout_seed = 22;
    const bool tc = g.type == RouterType::kTokensChoose;
    const int64_t kk = g.k;
    k.precondition = [tc, kk](Subject& s) -> std::string {
      auto& m = dynamic_cast<MoeSubject&>(s);
      if (tc && m.layer.plan().rows() >= 16 * kk) return "no (token, expert) choice was dropped";
      if (!tc && !(m.metrics.fraction_tokens_left_behind > 0)) return "no token was left behind";
      return "";
    };
    all.push_back(std::move(k));
  }

  // Each router kind and option against the reference: dropout, jitter, losses, two groups.
  struct Path {
    RouterType type;
    int64_t k;
    double cf;
    bool bpr, dropless;
  };
  for (const Path& p : {Path{RouterType::kExpertsChoose, 1, 1.0, false, false},
                        Path{RouterType::kExpertsChoose, 1, 0.5, false, false},
                        Path{RouterType::kTokensChoose, 1, 1.0, true, false},
                        Path{RouterType::kTokensChoose, 2, 1.0, false, false},
                        Path{RouterType::kTokensChoose, 2, 0.5, true, false},
                        Path{RouterType::kTokensChoose, 3, 1.0, true, true}}) {
    MoeLayerConfig c = small_moe(p.type, p.k, p.cf);
    c.router.batch_prioritized_routing = p.bpr;
    c.dropless = p.dropless;
    c.router.jitter_noise = 0.1;
    c.experts.inner_dropout = 0.2;
    c.experts.output_dropout = 0.1;
    c.router.router_z_loss_weight = 0.01;
    c.router.load_balancing_loss_weight = 0.1;
    c.examples_per_group = 2;
    const std::string name = std::string(p.type == RouterType::kExpertsChoose ? "ec" : "tc") +
                             "_k" + std::to_string(p.k) + "_cf" +
                             std::to_string(static_cast<int>(p.cf * 100)) + (p.bpr ? "_bpr" : "") +
                             (p.dropless ? "_dropless" : "");
    Case k = moe_case("moe/paths/" + name, c, {4, 6, 8}, 3);
    k.dout_seed = 4;
    k.options = {true, 7};
    k.gradient = GradientCheck::kNone;  // routing ties under a step: the drops cases above cover it
    all.push_back(std::move(k));
  }

  // A wider tokens-choose layer whose work splits over threads (determinism), with dropout,
  // jitter and both losses.
  {
    MoeLayerConfig c = small_moe(RouterType::kTokensChoose, 2, 1.25);
    c.hidden_size = 64;
    c.experts.num_experts = c.router.num_experts = 8;
    c.experts.d_ff = 300;
    c.router.jitter_noise = 0.05;
    c.experts.inner_dropout = 0.1;
    c.experts.output_dropout = 0.1;
    c.router.load_balancing_loss_weight = 0.01;
    c.router.router_z_loss_weight = 0.001;
    Case k = moe_case("moe/wide/tc_k2", c, {4, 96, 64}, 1);
    k.dout_seed = 2;
    k.gradient = GradientCheck::kNone;  // the small cases check gradients element by element
    all.push_back(std::move(k));
  }

  // Production sizes for the bench (bench moe's defaults: H 512, F 2048, E 16, 8 x 512 tokens,
  // capacity factor 1, GELU-tanh), one per router kind.
  struct Perf {
    const char* name;
    RouterType type;
    int64_t k;
  };
  for (const Perf& p : {Perf{"experts_choose", RouterType::kExpertsChoose, 1},
                        Perf{"tokens_choose_k1", RouterType::kTokensChoose, 1},
                        Perf{"tokens_choose_k2", RouterType::kTokensChoose, 2},
                        Perf{"top2", RouterType::kTop2, 2}}) {
    MoeLayerConfig c = small_moe(p.type, p.k, 1.0);
    c.hidden_size = 512;
    c.experts.num_experts = c.router.num_experts = 16;
    c.experts.d_ff = 2048;
    c.experts.activation = "gelu_tanh";
    c.router.kernel_init_stddev = c.experts.kernel_init_stddev = 0.02;
    if (p.type == RouterType::kTop2) c.train_capacity_factor = c.eval_capacity_factor = 1.0;
    Case k = moe_case(std::string("perf/moe/") + p.name, c, {8, 512, 512}, 1);
    k.perf_only = true;
    k.gradient = GradientCheck::kNone;
    k.reference = nullptr;
    // Only the errors found before any weight is allocated: the others build a 134 MB layer.
    std::erase_if(k.errors, [](const BadInput& b) { return b.error != "ConfigError"; });
    all.push_back(std::move(k));
  }

  // lingvo's Top-2: each policy, legacy or not, with paddings: reference, and gradients with
  // capacity drops present.
  struct Top2 {
    const char* name;
    bool legacy;
    SecondExpertPolicy policy;
    bool paddings;
  };
  for (const Top2& t : {Top2{"all_legacy", true, SecondExpertPolicy::kAll, false},
                        Top2{"all", false, SecondExpertPolicy::kAll, false},
                        Top2{"all_legacy_pad", true, SecondExpertPolicy::kAll, true},
                        Top2{"all_pad", false, SecondExpertPolicy::kAll, true},
                        Top2{"random_legacy", true, SecondExpertPolicy::kRandom, false},
                        Top2{"random", false, SecondExpertPolicy::kRandom, true},
                        Top2{"sampling_legacy", true, SecondExpertPolicy::kSampling, true}}) {
    MoeLayerConfig c = top2_moe(t.legacy, t.policy);
    c.experts.inner_dropout = 0.2;  // lingvo's dropout on the hidden activations
    c.router.load_balancing_loss_weight = 0.1;
    Case k = moe_case(std::string("moe/top2/") + t.name, c, {2, 8, 8}, 7, t.paddings);
    k.dout_seed = 8;
    k.options = {true, 4};
    k.gradient = GradientCheck::kNone;
    if (t.paddings)
      k.precondition = [](Subject& s) -> std::string {
        const Tensor& y = *s.outputs()[0];
        const Tensor& pad = dynamic_cast<MoeSubject&>(s).paddings;
        for (int64_t n = 0; n < pad.numel(); ++n)
          for (int64_t h = 0; pad[n] == 1.f && h < 8; ++h)
            if (y[n * 8 + h] != 0.f) return "a padding token has a nonzero output";
        return "";
      };
    all.push_back(std::move(k));

    MoeLayerConfig g = top2_moe(t.legacy, t.policy);
    g.router.router_z_loss_weight = 0.05;
    g.router.load_balancing_loss_weight = 0.2;
    g.router.jitter_noise = 0.05;
    g.experts.activation = "gelu";  // smooth, so finite differences are clean
    Case kg = moe_case(std::string("moe/top2_drops/") + t.name, g, {2, 8, 8}, 21, t.paddings);
    kg.dout_seed = 22;
    kg.precondition = [](Subject& s) -> std::string {
      const MoeMetrics& m = dynamic_cast<MoeSubject&>(s).metrics;
      return m.over_capacity_1_ratio + m.over_capacity_2_ratio > 0 ? "" : "no capacity drop";
    };
    all.push_back(std::move(kg));
  }

  // lingvo's GLU experts (wi split in two), no biases, GELU.
  {
    MoeLayerConfig c = top2_moe(true, SecondExpertPolicy::kAll);
    c.experts.glu = true;
    c.experts.use_bias = false;
    c.experts.activation = "gelu";
    Case k = moe_case("moe/top2_glu", c, {2, 8, 8}, 31);
    k.dout_seed = 32;
    k.options = {true, 1};
    k.precondition = [](Subject& s) -> std::string {
      const Shape want{4, 8, 24};  // [E, H, 2F]
      return find_weight(s.params(), "experts/intermediate/kernel").shape() == want
                 ? ""
                 : "the GLU intermediate kernel is not [E, H, 2F]";
    };
    all.push_back(std::move(k));
  }

  // The dense FeedForward with each activation and the GLU variant, dropout on.
  for (const char* act : {"relu", "gelu", "gelu_tanh", "glu_gelu"}) {
    FeedForwardConfig c;
    c.d_ff = 10;
    c.glu = std::string(act) == "glu_gelu";
    c.activation = c.glu ? "gelu" : act;
    c.inner_dropout = 0.2;
    c.output_dropout = 0.1;
    c.kernel_init_stddev = 0.4;
    Case k;
    k.name = std::string("nn/feed_forward/") + act;
    k.make = [c] {
      return std::make_unique<LayerSubject<FeedForward>>(random_input({2, 3, 6}, 1), c, 6, 3);
    };
    k.options = {true, 5};
    k.dout_seed = 2;
    k.input_samples = k.param_samples = 24;
    k.errors = {{"x of the wrong width",
                 [c] {
                   FeedForward f(c, 6, 3);
                   Tensor y;
                   f.forward(Tensor({2, 3, 7}), y);
                 },
                 "InvalidArgument", "FeedForward input: expected shape [..., H=6]"},
                {"d_ff 0",
                 [c] {
                   FeedForwardConfig bad = c;
                   bad.d_ff = 0;
                   FeedForward f(bad, 6, 3);
                 },
                 "ConfigError", "d_ff: expected >= 1, got 0"}};
    k.flops = [c](Subject&) { return 2.0 * 6 * 6 * (c.glu ? 3 : 2) * c.d_ff; };
    all.push_back(std::move(k));
  }

  // FeedForwardExperts' dense API ([G, E, C, H], every slot computed).
  {
    FeedForwardExpertsConfig c;
    c.num_experts = 3;
    c.d_ff = 7;
    c.inner_dropout = 0.1;
    c.kernel_init_stddev = 0.4;
    Case k;
    k.name = "moe/experts_dense";
    k.make = [c] {
      return std::make_unique<LayerSubject<FeedForwardExperts>>(random_input({2, 3, 4, 5}, 1), c, 5,
                                                                9);
    };
    k.options = {true, 1};
    k.dout_seed = 2;
    k.input_samples = k.param_samples = 24;
    k.errors = {{"x without the expert axis",
                 [c] {
                   FeedForwardExperts f(c, 5, 9);
                   Tensor y;
                   f.forward(Tensor({2, 4, 5}), y);
                 },
                 "InvalidArgument", "FeedForwardExperts input: expected shape [G, E=3, C, H=5]"}};
    all.push_back(std::move(k));
  }

  // LayerNorm with non-trivial gamma and beta, and at a width that splits over threads.
  for (const bool wide : {false, true}) {
    Case k;
    const int64_t H = wide ? 130 : 5;
    const Shape shape = wide ? Shape{64, 130} : Shape{2, 3, 5};
    k.name = wide ? "nn/layer_norm/wide" : "nn/layer_norm/small";
    k.make = [=] {
      auto s = std::make_unique<LayerSubject<LayerNorm>>(random_input(shape, wide ? 7 : 5), H,
                                                         wide ? 1e-12 : 1e-5);
      if (!wide) {
        s->layer.gamma = random_input({5}, 3);
        for (int64_t i = 0; i < 5; ++i) s->layer.gamma[i] = 1.f + 0.5f * s->layer.gamma[i];
        s->layer.beta = random_input({5}, 4);
      }
      return s;
    };
    k.dout_seed = wide ? 8 : 6;
    k.input_samples = 30, k.param_samples = 24;
    if (wide) k.gradient = GradientCheck::kNone;  // the small one checks it; this one threads
    k.errors = {{"x of the wrong width",
                 [=] {
                   LayerNorm ln(H);
                   Tensor y;
                   ln.forward(Tensor({2, H + 1}), y);
                 },
                 "InvalidArgument",
                 "LayerNorm input: expected shape [..., H=" + std::to_string(H) + "]"}};
    all.push_back(std::move(k));
  }

  // Dense with each activation, with and without bias.
  for (Activation act : {Activation::kLinear, Activation::kTanh, Activation::kGeluTanh})
    for (bool bias : {true, false}) {
      Case k;
      k.name = "nn/dense/" + activation_name(act) + (bias ? "_bias" : "");
      k.make = [=] {
        return std::make_unique<LayerSubject<Dense>>(random_input({3, 4}, 1), 4, 6, act, bias, 0.5,
                                                     7);
      };
      k.dout_seed = 2;
      k.input_samples = k.param_samples = 24;
      k.errors = {{"x of the wrong width",
                   [=] {
                     Dense d(4, 6, act, bias, 0.5, 7);
                     Tensor y;
                     d.forward(Tensor({3, 5}), y);
                   },
                   "InvalidArgument", "Dense input: expected shape [..., 4]"}};
      all.push_back(std::move(k));
    }

  // Token mixing: linear, and Fourier / Hartley by DFT matrix and by FFT.
  for (auto mech : {MixingMechanism::kLinear, MixingMechanism::kFourier, MixingMechanism::kHartley})
    for (bool fft : {false, true}) {
      if (mech == MixingMechanism::kLinear && fft) continue;
      Case k;
      k.name = "nn/mixing/" + mixing_mechanism_name(mech) + (fft ? "_fft" : "");
      k.make = [=] {
        return std::make_unique<LayerSubject<MixingLayer>>(random_input({2, 5, 4}, 1), mech, 5, 4,
                                                           fft, 0.5, 7);
      };
      k.dout_seed = 2;
      k.input_samples = 40, k.param_samples = 24;
      k.errors = {{"x of another length",
                   [=] {
                     MixingLayer m(mech, 5, 4, fft, 0.5, 7);
                     Tensor y;
                     m.forward(Tensor({2, 6, 4}), y);
                   },
                   "InvalidArgument", "expected shape [B, L=5, H=4] (the mixing length is fixed)"}};
      all.push_back(k);
      // A sequence longer than a row tile (512 + 8 rows): the tiled products and dW_seq's tiles.
      if (mech != MixingMechanism::kLinear) continue;
      k.name = "nn/mixing/linear_tiles";
      k.make = [=] {
        return std::make_unique<LayerSubject<MixingLayer>>(random_input({2, 520, 3}, 3), mech, 520,
                                                           3, false, 0.05, 8);
      };
      all.push_back(std::move(k));
    }

  // Encoder blocks: every mixing and attention, dense FFN and MoE, in the three wirings (paper,
  // tf-models, pre-LN), dropout on.
  for (bool attention : {false, true})
    for (auto mix :
         {MixingMechanism::kLinear, MixingMechanism::kFourier, MixingMechanism::kHartley}) {
      if (attention && mix != MixingMechanism::kLinear) continue;
      for (bool moe : {false, true})
        for (int wiring = 0; wiring < 3; ++wiring) {
          EncoderBlockConfig b;
          b.hidden_size = 8;
          b.seq_length = 4;
          b.attention = attention;
          b.mixing = mix;
          b.num_heads = 2;
          b.attention_dropout = 0.1;
          b.moe = moe;
          // Tokens-choose with room for every token: a routing decision flips only when a
          // token's two expert probabilities tie, which keeps finite differences away from
          // discontinuities (the mixing couples all tokens).
          b.moe_layer = small_moe(RouterType::kTokensChoose, 1, 2.0);
          b.moe_layer.experts.num_experts = b.moe_layer.router.num_experts = 2;
          b.moe_layer.experts.d_ff = 6;
          b.moe_layer.experts.output_dropout = 0.1;
          b.ffn.d_ff = 6;
          b.ffn.activation = "gelu_tanh";
          b.ffn.output_dropout = 0.1;
          b.norm_first = wiring == 2;
          b.tf_models_compat = wiring == 1;
          b.init_stddev = 0.3;
          b.seed = 5;
          Case k;
          k.name = std::string("models/encoder_block/") +
                   (attention ? "attention" : mixing_mechanism_name(mix)) +
                   (moe ? "_moe" : "_ffn") + "_wiring" + std::to_string(wiring);
          k.make = [b, attention] {
            auto s = std::make_unique<LayerSubject<EncoderBlock>>(
                random_input({2, 4, 8}, 11, -0.3f, 0.3f), b);
            if (attention)
              s->mask = attention_mask_from_padding(Tensor({2, 4}, {1, 1, 1, 0, 1, 1, 1, 1}));
            return s;
          };
          k.dout_seed = 12;
          k.input_samples = 32, k.param_samples = 12;
          // A float32 loss limits the step from below (rounding noise / step swamps the small
          // attention-kernel gradients at 3e-3), while an MoE after unnormalised mixing needs a
          // small one (its LayerNorm input is strongly curved and routing can flip).
          k.fd_step = moe && !attention ? 3e-3f : 1e-2f;
          k.errors = {{"x of the wrong width",
                       [b] {
                         EncoderBlock blk(b);
                         Tensor y;
                         blk.forward(Tensor({2, 4, 7}), nullptr, y, {});
                       },
                       "InvalidArgument", "expected shape"}};
          all.push_back(std::move(k));
        }
    }

  // The whole tiny network with both heads: every mixing, each wiring, dense inputs, directional
  // (Ridders) checks: a float32 network's loss carries rounding noise of about 5e-7, which puts
  // per-element differences at the tolerance (the layers' own cases check every element).
  for (auto mix : {MixingMechanism::kLinear, MixingMechanism::kFourier, MixingMechanism::kHartley})
    for (int wiring = 0; wiring < 3; ++wiring) {
      SparseMixerConfig c;
      c.vocab_size = 11;
      c.hidden_size = 8;
      c.num_layers = 3;
      c.moe_layers = {1};
      c.attention_layers = {2};
      c.moe.experts.num_experts = c.moe.router.num_experts = 2;
      // Tokens-choose top-2 of 2 experts with room for every token: no token can be dropped or
      // rerouted under a difference, while the router still gets gradients.
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
      c.norm_first = wiring == 2;
      c.tf_models_compat = wiring == 1;
      c.seed = 10;
      c.with_dense_inputs = true;
      c.output_range = 2;
      Case k;
      k.name =
          "models/sparse_mixer/" + mixing_mechanism_name(mix) + "_wiring" + std::to_string(wiring);
      k.make = [c] {
        auto s = std::make_unique<NetworkSubject>(c);
        // Expert 0 is every token's first choice by a wide margin: the expert dropout is keyed by
        // the slot, and a token's slot would move if its first and second choice swapped.
        Tensor& bias = s->net.block(1).moe_layer()->gate().bias;
        bias[0] = 1.f, bias[1] = -1.f;
        return s;
      };
      k.options = {true, 7};
      k.dout_seed = 31;
      k.gradient = GradientCheck::kDirectional;
      k.errors = {{"ids of another length",
                   [c] {
                     SparseMixer net(c);
                     const Tensor ids({2, 5});
                     net.forward({&ids});
                   },
                   "InvalidArgument", "max_sequence_length"}};
      all.push_back(std::move(k));
    }
  {
    Case k;
    k.name = "models/sparse_mixer/tiny_preset";
    k.make = [] { return std::make_unique<TinyNetworkSubject>(); };
    k.options = {true, 4};
    k.dout_seed = 9;
    k.gradient = GradientCheck::kNone;  // determinism at full size; the cases above check gradients
    k.errors = {{"a token id past the vocabulary",
                 [] {
                   SparseMixer net(load_model_config("tiny"));
                   const Tensor ids({1, 32}, 600.f);
                   net.forward({&ids});
                 },
                 "InvalidArgument", "600"}};
    all.push_back(std::move(k));
  }

  // Embeddings: the factorised-width projection (W 4 != H 6), dense inputs, dropout.
  {
    EmbeddingsConfig e;
    e.vocab_size = 11;
    e.hidden_size = 6;
    e.embedding_width = 4;
    e.max_sequence_length = 5;
    e.type_vocab_size = 3;
    e.dropout = 0.2;
    e.init_stddev = 0.5;
    e.seed = 9;
    Case k;
    k.name = "nn/embeddings";
    k.make = [e] { return std::make_unique<EmbeddingsSubject>(e); };
    k.options = {true, 2};
    k.dout_seed = 4;
    k.input_samples = k.param_samples = 24;
    k.errors = {{"a sequence shorter than max_sequence_length",
                 [e] {
                   Embeddings emb(e);
                   Tensor out;
                   emb.forward(Tensor({1, 4}), Tensor({1, 4}), nullptr, nullptr, out, {});
                 },
                 "InvalidArgument", "max_sequence_length=5"}};
    all.push_back(std::move(k));
  }

  // lingvo's GatherK: the gradient scatters into the gathered positions.
  {
    Case k;
    k.name = "lingvo/gather_k";
    k.make = [] { return std::make_unique<GatherKSubject>(); };
    k.dout_seed = 2;
    k.input_samples = 60;
    k.errors = {{"k larger than T",
                 [] {
                   Tensor padding;
                   gather_k_index(Tensor({5, 4}), 5, padding);
                 },
                 "InvalidArgument", "k"}};
    all.push_back(std::move(k));
  }

  // lingvo's gates (tokens, sentences, task embeddings; legacy or not): the dense combine and the
  // weighted aux loss through the gating weights and the inputs, with capacity drops present.
  for (GateInput kind : {GateInput::kTokens, GateInput::kSentence, GateInput::kTask})
    for (bool legacy : {true, false}) {
      Top2GatingConfig g = gate_config();
      g.options.legacy_mtf_behavior = legacy;
      g.aux_loss_weight = 0.3;
      Case k;
      k.name = std::string("lingvo/top2_gating/") +
               (kind == GateInput::kTokens     ? "tokens"
                : kind == GateInput::kSentence ? "sentence"
                                               : "task") +
               (legacy ? "_legacy" : "");
      k.make = [g, kind] { return std::make_unique<GateSubject>(g, kind); };
      k.options = {true, 0};
      k.dout_seed = 9;
      k.input_samples = 30, k.param_samples = 20;
      k.precondition = [](Subject& s) -> std::string {
        const auto& saved = dynamic_cast<GateSubject&>(s).gate.routing().saved;
        return saved.over_capacity_1_ratio + saved.over_capacity_2_ratio > 0 ? ""
                                                                             : "no capacity drop";
      };
      k.errors = {{"inputs of the wrong width",
                   [g, kind] {
                     Top2Gating gate(g, kind);
                     const std::vector<int32_t> seg(12, 1);
                     const Tensor task({2, 6, 5});
                     gate.forward(Tensor({2, 6, 4}), nullptr, &seg, &task, {});
                   },
                   "InvalidArgument", "inputs: expected shape [G, S, M=5]"}};
      all.push_back(std::move(k));
    }

  // The sentence gate with experts: the sparse path against the einsum form on the same gate
  // (forward), and the whole chain's gradient.
  {
    FeedForwardExpertsConfig ec;
    ec.num_experts = 3;
    ec.d_ff = 5;
    ec.activation = "gelu";
    ec.kernel_init_stddev = 0.4;
    Case k;
    k.name = "lingvo/sentence_gate_experts";
    k.make = [ec] {
      return std::make_unique<GatedExpertsSubject>(GatedExpertsSubject::kSparse, ec);
    };
    k.options = {true, 0};
    k.dout_seed = 42;
    k.input_samples = 40, k.param_samples = 20;
    k.forward_reference = [ec](Subject&) -> std::unique_ptr<Subject> {
      return std::make_unique<GatedExpertsSubject>(GatedExpertsSubject::kEinsum, ec);
    };
    k.errors = {{"a negative segment id",
                 [] {
                   Top2Gating gate(GatedExpertsSubject::config(), GateInput::kSentence);
                   const std::vector<int32_t> seg(12, -1);
                   gate.forward(random_input({2, 6, 6}, 1), nullptr, &seg, nullptr, {});
                 },
                 "InvalidArgument", "segment_id"}};
    all.push_back(std::move(k));
  }

  // lingvo's shared embedding-softmax: the loss (with and without logit clipping; label
  // smoothing and z-loss on) through the activation and the tied embedding, and the lookup.
  for (const double clip : {0.0, 0.6}) {
    SharedEmbeddingSoftmaxConfig s;
    s.vocab_size = 7;
    s.max_len = 5;
    s.embedding_dim = 4;
    s.z_loss_coef = 0.05;
    s.label_smoothing = 0.2;
    s.logits_abs_max = clip;
    s.use_tgt_labels_size_as_loss_denominator = true;
    s.seed = 3;
    Case k;
    k.name = clip > 0 ? "lingvo/shared_softmax/loss_clipped" : "lingvo/shared_softmax/loss";
    k.make = [s] { return std::make_unique<SharedSoftmaxSubject>(s, SharedSoftmaxSubject::kLoss); };
    k.input_samples = 40, k.param_samples = 28;
    k.atol = 1e-4;
    k.errors = {{"labels that are not integers",
                 [s] {
                   SharedEmbeddingSoftmax l(s);
                   l.compute_loss(random_input({2, 5, 4}, 1), Tensor({2, 5}, 1.5f), Tensor({2, 5}));
                 },
                 "InvalidArgument", "labels"}};
    all.push_back(k);
    if (clip > 0) continue;
    k.name = "lingvo/shared_softmax/lookup";
    k.make = [s] {
      return std::make_unique<SharedSoftmaxSubject>(s, SharedSoftmaxSubject::kLookup);
    };
    k.dout_seed = 5;
    k.atol = 2e-4;
    k.errors = {{"an id past the vocabulary",
                 [s] {
                   SharedEmbeddingSoftmax l(s);
                   Tensor out;
                   l.forward(Tensor({1, 2}, {0, 7}), Tensor({1, 2}), out);
                 },
                 "InvalidArgument", "ids"}};
    all.push_back(std::move(k));
  }

  // Self-attention with a fully masked row, a masked key and attention dropout.
  {
    Case k;
    k.name = "nn/attention/masked";
    k.make = [] {
      auto s = std::make_unique<LayerSubject<SelfAttention>>(random_input({2, 4, 6}, 4), 6, 3, 0.25,
                                                             0.4, 3);
      s->mask = Tensor({2, 4, 4}, 1.f);
      for (int64_t j = 0; j < 4; ++j) s->mask[(0 * 4 + 2) * 4 + j] = 0.f;  // a fully masked row
      s->mask[(1 * 4 + 1) * 4 + 3] = 0.f;
      return s;
    };
    k.options = {true, 7};
    k.dout_seed = 5;
    k.input_samples = 48, k.param_samples = 16;
    k.errors = {{"x of the wrong width",
                 [] {
                   SelfAttention a(6, 3);
                   Tensor y;
                   a.forward(Tensor({2, 4, 5}), nullptr, y);
                 },
                 "InvalidArgument", "SelfAttention input: expected shape [B, L, H=6]"},
                {"heads not dividing H", [] { SelfAttention a(8, 3); }, "InvalidArgument",
                 "SelfAttention"}};
    all.push_back(k);
    // Wider, unmasked, for the determinism mode.
    k.name = "nn/attention/threads";
    k.make = [] {
      return std::make_unique<LayerSubject<SelfAttention>>(random_input({3, 7, 8}, 6), 8, 4, 0.1,
                                                           0.3, 8);
    };
    k.options = {true, 1};
    k.dout_seed = 7;
    k.gradient = GradientCheck::kNone;
    all.push_back(k);
    // Long enough (L = 300) that the forward's score blocks (65536 / L rows) and the backward's
    // (32768 / L rows) split the queries: 2 and 3 blocks, with padding and dropout.
    k.name = "nn/attention/blocks";
    k.make = [] {
      auto s = std::make_unique<LayerSubject<SelfAttention>>(random_input({1, 300, 4}, 9), 4, 2,
                                                             0.1, 0.5, 10);
      Tensor pad({1, 300}, 1.f);
      for (int64_t l = 280; l < 300; ++l) pad[l] = 0.f;
      s->mask = attention_mask_from_padding(pad);
      return s;
    };
    k.options = {true, 3};
    k.dout_seed = 11;
    k.gradient = GradientCheck::kElements;
    k.fd_step = 1e-2f;
    all.push_back(std::move(k));
  }
  return all;
}

}  // namespace

const std::vector<Case>& registry() {
  static const std::vector<Case> all = build();
  return all;
}

}  // namespace sparsemoe::cases
