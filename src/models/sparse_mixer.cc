// The Sparse Mixer encoder network (see sparse_mixer.h).
#include "sparsemoe/models/sparse_mixer.h"

#include <algorithm>
#include <string>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/nn/attention.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

namespace {

constexpr uint64_t kEmbeddingsTag = 1, kBlockTag = 2, kPoolerTag = 3;

std::string str(int64_t v) { return std::to_string(v); }

// moe_layers / attention_layers given as {"layout": name, "count": n}: the list of indices.
std::vector<int64_t> read_layout(const nlohmann::json& j, int64_t num_layers,
                                 const std::string& key) {
  JsonFields f(j, "SparseMixerConfig." + key);
  std::string layout;
  int64_t count = -1;
  f.read("layout", layout);
  f.read("count", count);
  f.finish();
  if (count < 0) throw ConfigError("SparseMixerConfig." + key + ": 'count' (>= 0) is required");
  try {
    return layer_layout(layout, num_layers, count);
  } catch (const InvalidArgument& e) {
    throw ConfigError("SparseMixerConfig." + key + ": " + e.what());
  }
}

bool contains(const std::vector<int64_t>& v, int64_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

std::vector<int64_t> layer_layout(const std::string& layout, int64_t N, int64_t n) {
  check_arg(n >= 0 && n <= N,
            "layer_layout count: expected 0 <= count <= num_layers=" + str(N) + ", got " + str(n));
  std::vector<int64_t> out;
  for (int64_t l = 0; l < N; ++l) {
    bool take;
    if (layout == "bottom")
      take = l < n;
    else if (layout == "middle")
      take = N - n <= 2 * l && 2 * l < N + n;
    else if (layout == "mixed")
      take = n > 0 && l % (N / n) == 0;
    else if (layout == "top")
      take = l >= N - n;
    else
      throw InvalidArgument("layout: expected 'bottom', 'middle', 'mixed' or 'top', got '" +
                            layout + "'");
    if (take) out.push_back(l);
  }
  return out;
}

bool SparseMixerConfig::is_moe_layer(int64_t l) const { return contains(moe_layers, l); }
bool SparseMixerConfig::is_attention_layer(int64_t l) const {
  return contains(attention_layers, l);
}

MoeLayerConfig SparseMixerConfig::default_moe() {
  MoeLayerConfig m;
  m.experts.num_experts = m.router.num_experts = 16;
  return m;
}

MoeLayerConfig SparseMixerConfig::moe_layer(int64_t l) const {
  MoeLayerConfig m = moe;
  m.name = "moe_" + str(l);
  m.hidden_size = hidden_size;
  m.experts.d_ff = inner_dim;
  m.experts.activation = inner_activation;
  m.experts.output_dropout = output_dropout;
  m.experts.kernel_init_stddev = initializer_range;
  m.router.num_experts = m.experts.num_experts;
  m.router.kernel_init_stddev = initializer_range;
  return m;
}

SparseMixerConfig SparseMixerConfig::from_json(const nlohmann::json& j) {
  reject_moved_keys(j, "SparseMixerConfig",
                    {{"num_experts", "moe.experts.num_experts"},
                     {"train_capacity_factor", "moe.train_capacity_factor"},
                     {"eval_capacity_factor", "moe.eval_capacity_factor"},
                     {"examples_per_group", "moe.examples_per_group"},
                     {"min_expert_capacity", "moe.min_expert_capacity"},
                     {"router", "moe.router"}});
  nlohmann::json k = j;
  SparseMixerConfig c;
  if (k.is_object() && k.contains("num_layers") && k["num_layers"].is_number_integer())
    c.num_layers = k["num_layers"].get<int64_t>();
  for (const char* key : {"moe_layers", "attention_layers"})
    if (k.is_object() && k.contains(key) && k[key].is_object())
      k[key] = read_layout(k[key], c.num_layers, key);
  config_read(k, "SparseMixerConfig", c);
  c.validate();
  return c;
}

void SparseMixerConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("SparseMixerConfig: " + m); };
  check_fields(*this, "SparseMixerConfig");
  for (const auto* list : {&moe_layers, &attention_layers}) {
    const char* key = list == &moe_layers ? "moe_layers" : "attention_layers";
    for (size_t i = 0; i < list->size(); ++i) {
      const int64_t l = (*list)[i];
      if (l < 0 || l >= num_layers)
        bad(std::string(key) + ": layer " + str(l) + " outside [0, num_layers=" + str(num_layers) +
            ")");
      if (std::find(list->begin(), list->begin() + i, l) != list->begin() + i)
        bad(std::string(key) + ": layer " + str(l) + " listed twice");
    }
  }
  if (!attention_layers.empty() && hidden_size % num_attention_heads != 0)
    bad("hidden_size (" + str(hidden_size) + ") must be divisible by num_attention_heads (" +
        str(num_attention_heads) + ")");
  if (output_range > max_sequence_length)
    bad("output_range: expected <= max_sequence_length=" + str(max_sequence_length) + ", got " +
        str(output_range));
  if (!moe_layers.empty()) {
    try {
      moe_layer(moe_layers[0]).validate();
    } catch (const ConfigError& e) {
      throw ConfigError(std::string("SparseMixerConfig.moe: ") + e.what());
    }
  }
}

nlohmann::json SparseMixerMetrics::to_json() const {
  nlohmann::json j;
  j["total"] = {{"load_balancing_loss", load_balancing_loss},
                {"router_z_loss", router_z_loss},
                {"unscaled_router_z_loss", unscaled_router_z_loss},
                {"fraction_tokens_left_behind", fraction_tokens_left_behind},
                {"router_confidence", router_confidence},
                {"expert_usage", expert_usage},
                {"loss", loss}};
  for (size_t i = 0; i < per_layer.size(); ++i)
    j["layer_" + str(moe_layer_index[i])] = per_layer[i].to_json();
  return j;
}

namespace {

EmbeddingsConfig embeddings_config(const SparseMixerConfig& c) {
  EmbeddingsConfig e;
  e.vocab_size = c.vocab_size;
  e.hidden_size = c.hidden_size;
  e.embedding_width = c.embedding_width;
  e.max_sequence_length = c.max_sequence_length;
  e.type_vocab_size = c.type_vocab_size;
  e.dropout = c.output_dropout;
  e.init_stddev = c.initializer_range;
  e.seed = derive_key(c.seed, kEmbeddingsTag);
  return e;
}

EncoderBlockConfig block_config(const SparseMixerConfig& c, int64_t l) {
  EncoderBlockConfig b;
  b.hidden_size = c.hidden_size;
  b.seq_length = c.max_sequence_length;
  b.attention = c.is_attention_layer(l);
  b.mixing = c.mixing_mechanism;
  b.use_fft = c.use_fft;
  b.num_heads = c.num_attention_heads;
  b.attention_dropout = c.attention_dropout;
  b.ffn.d_ff = c.inner_dim;
  b.ffn.activation = c.inner_activation;
  b.ffn.output_dropout = c.output_dropout;
  b.ffn.kernel_init_stddev = c.initializer_range;
  b.moe = c.is_moe_layer(l);
  if (b.moe) b.moe_layer = c.moe_layer(l);
  b.norm_first = c.norm_first;
  b.tf_models_compat = c.tf_models_compat;
  b.init_stddev = c.initializer_range;
  b.seed = derive_key(c.seed, kBlockTag, static_cast<uint64_t>(l));
  return b;
}

}  // namespace

double SparseMixerConfig::float_count() const {
  const double H = static_cast<double>(hidden_size), L = static_cast<double>(max_sequence_length);
  const double W = embedding_width > 0 ? static_cast<double>(embedding_width) : H;
  double n = (static_cast<double>(vocab_size) + static_cast<double>(type_vocab_size) + L + 2) * W;
  if (W != H) n += W * H + H;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (is_attention_layer(l))
      n += 4 * (H * H + H);
    else if (mixing_mechanism == MixingMechanism::kLinear)
      n += L * L;
    else if (!use_fft)
      n += 2 * (L * L + H * H);  // the DFT matrices (buffers, not parameters)
    n += 4 * H;                  // two layer norms
    const MoeLayerConfig m = is_moe_layer(l) ? moe_layer(l) : MoeLayerConfig{};
    const double F = static_cast<double>(inner_dim),
                 E = is_moe_layer(l) ? m.experts.num_experts : 1;
    const double F1 = is_moe_layer(l) && m.experts.glu ? 2 * F : F;
    n += E * (H * F1 + F1 + F * H + H) + (is_moe_layer(l) ? H * E + E : 0);
  }
  return n + H * H + H;  // the pooler
}

double SparseMixerConfig::expert_float_count(int64_t procs) const {
  const double H = static_cast<double>(hidden_size), F = static_cast<double>(inner_dim);
  double n = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (!is_moe_layer(l)) continue;
    const MoeLayerConfig m = moe_layer(l);
    const double F1 = m.experts.glu ? 2 * F : F;
    const int64_t E = m.experts.num_experts, held = (E + procs - 1) / std::max<int64_t>(1, procs);
    n += static_cast<double>(held) * (H * F1 + F1 + F * H + H);
  }
  return n;
}

namespace {
const SparseMixerConfig& checked(const SparseMixerConfig& c, ExpertPlacement p) {
  c.validate();
  // A process holding some of the experts allocates only those.
  const double floats = c.float_count() - c.expert_float_count() + c.expert_float_count(p.size);
  check_memory(2 * 4 * floats, "SparseMixer (hidden_size " + str(c.hidden_size) + ", inner_dim " +
                                   str(c.inner_dim) + ", num_layers " + str(c.num_layers) +
                                   ", vocab_size " + str(c.vocab_size) +
                                   "), weights and gradients");
  return c;
}
}  // namespace

SparseMixer::SparseMixer(const SparseMixerConfig& config, ExpertPlacement placement)
    : config_(checked(config, placement)),
      embeddings_(embeddings_config(config)),
      pooler_(config.hidden_size, config.hidden_size, Activation::kTanh, true,
              config.initializer_range, derive_key(config.seed, kPoolerTag)) {
  for (int64_t l = 0; l < config.num_layers; ++l) {
    EncoderBlockConfig b = block_config(config, l);
    b.placement = placement;
    blocks_.push_back(std::make_unique<EncoderBlock>(b));
  }
  hidden_.resize(config.num_layers + 1);
}

int64_t SparseMixer::prepare_inference() {
  int64_t bytes = embeddings_.prepare_inference();
  for (auto& b : blocks_) bytes += b->prepare_inference();
  pooler_.prepare_inference();
  return bytes + pooler_.packed_bytes();
}

std::vector<ParamRef> SparseMixer::params() {
  std::vector<ParamRef> p = embeddings_.params();
  for (size_t l = 0; l < blocks_.size(); ++l)
    for (auto& r : prefixed("transformer_layer_" + str(l), blocks_[l]->params())) p.push_back(r);
  for (auto& r : prefixed("pooler_transform", pooler_.params())) p.push_back(r);
  return p;
}

bool SparseMixer::slices_output() const {
  // tf-models drops output_range on its way to the scaffold (spec §12.1), so compat ignores it.
  return config_.output_range > 0 && !config_.tf_models_compat;
}

const Tensor& SparseMixer::sequence_output() const {
  return slices_output() ? sliced_ : hidden_.back();
}

SparseMixerMetrics SparseMixer::forward(const SparseMixerInputs& in, const ForwardOptions& opt) {
  const SparseMixerConfig& c = config_;
  saved_ = false;  // until this forward completes
  check_arg(in.input_word_ids != nullptr, "input_word_ids: required");
  const Tensor& ids = *in.input_word_ids;
  check_arg(ids.rank() == 2,
            "input_word_ids: expected shape [B, L], got " + shape_str(ids.shape()));
  const int64_t B = ids.dim(0), Lt = ids.dim(1), H = c.hidden_size;
  const bool dense = in.dense_inputs != nullptr;
  check_arg(!dense || c.with_dense_inputs,
            "dense_inputs: given, but the config has with_dense_inputs=false");
  check_arg(dense || (!in.dense_mask && !in.dense_type_ids),
            "dense_mask / dense_type_ids: given without dense_inputs");
  const Tensor* types = in.input_type_ids;
  if (!types) {
    type_zeros_.resize(ids.shape());
    type_zeros_.zero();
    types = &type_zeros_;
  }
  Tensor dense_types_zero;
  const Tensor* dtypes = in.dense_type_ids;
  if (dense && !dtypes) {
    dense_types_zero = Tensor({B, in.dense_inputs->dim(1)});
    dtypes = &dense_types_zero;
  }
  embeddings_.forward(ids, *types, in.dense_inputs, dtypes, hidden_[0], opt);
  const int64_t L = hidden_[0].dim(1);
  check_arg(opt.token_offset == opt.sequence_offset * L,
            "ForwardOptions: token_offset must be sequence_offset * L (L=" + std::to_string(L) +
                "), got " + std::to_string(opt.token_offset) + " and " +
                std::to_string(opt.sequence_offset));

  // The padding mask [B, L]: input_mask then dense_mask (absent parts count as real tokens).
  const bool has_mask = in.input_mask || in.dense_mask;
  ForwardOptions bopt = opt;
  bopt.paddings = nullptr;
  if (has_mask) {
    Tensor pad_mask({B, L}, 1.f);
    auto copy_mask = [&](const Tensor* m, const char* name, int64_t l0, int64_t len) {
      if (!m) return;
      check_shape(name, m->shape(), {B, len}, l0 ? "[B, Ld]" : "[B, L]");
      for (int64_t b = 0; b < B; ++b)
        for (int64_t l = 0; l < len; ++l) {
          const float v = (*m)[b * len + l];
          check_arg(v == 0.f || v == 1.f,
                    std::string(name) + ": expected 0 or 1, got " + std::to_string(v));
          pad_mask[b * L + l0 + l] = v;
        }
    };
    copy_mask(in.input_mask, "input_mask", 0, Lt);
    copy_mask(in.dense_mask, "dense_mask", Lt, L - Lt);
    mask_ = attention_mask_from_padding(pad_mask);
    // Only lingvo's top2 gating is padding-aware; tf-models and the paper route every token.
    if (make_policy(c.moe.router)->takes_paddings()) {
      paddings_.resize({B, L});
      for (int64_t i = 0; i < B * L; ++i) paddings_[i] = 1.f - pad_mask[i];
      bopt.paddings = &paddings_;
    }
  }

  SparseMixerMetrics met;
  int64_t moe_count = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    MoeMetrics m =
        blocks_[l]->forward(hidden_[l], has_mask ? &mask_ : nullptr, hidden_[l + 1], bopt);
    if (!blocks_[l]->is_moe()) continue;
    ++moe_count;
    add_common_moe_metrics(met, m);
    if (!c.export_metrics) continue;
    met.moe_layer_index.push_back(l);
    met.per_layer.push_back(std::move(m));
  }
  if (moe_count > 0) {
    met.fraction_tokens_left_behind /= static_cast<double>(moe_count);
    met.router_confidence /= static_cast<double>(moe_count);
    met.expert_usage /= static_cast<double>(moe_count);
  }

  const Tensor& last = hidden_.back();  // [B, L, H]
  if (slices_output()) {
    const int64_t R = c.output_range;
    sliced_.resize({B, R, H});
    for (int64_t b = 0; b < B; ++b)
      std::copy(last.data() + b * L * H, last.data() + (b * L + R) * H, sliced_.data() + b * R * H);
  }
  first_.resize({B, H});
  for (int64_t b = 0; b < B; ++b)
    std::copy(last.data() + b * L * H, last.data() + b * L * H + H, first_.data() + b * H);
  pooler_.forward(first_, pooled_, opt.save_for_backward);
  saved_ = opt.save_for_backward;
  return met;
}

void SparseMixer::backward(const Tensor* dsequence, const Tensor* dpooled, Tensor* ddense) {
  // Checked before any gradient is touched (a layer further down would throw half-way through).
  check_arg(saved_,
            "SparseMixer::backward: call forward first (with ForwardOptions::save_for_backward)");
  const Tensor& last = hidden_.back();
  const int64_t B = last.dim(0), L = last.dim(1), H = last.dim(2);
  g_.resize(last.shape());
  g_.zero();
  if (dsequence) {
    const Tensor& seq = sequence_output();
    check_shape("dsequence", dsequence->shape(), seq.shape(), "[B, Lout, H]");
    const int64_t R = seq.dim(1);
    for (int64_t b = 0; b < B; ++b)
      std::copy(dsequence->data() + b * R * H, dsequence->data() + (b + 1) * R * H,
                g_.data() + b * L * H);
  }
  if (dpooled) {
    check_shape("dpooled", dpooled->shape(), pooled_.shape(), "[B, H]");
    pooler_.backward(*dpooled, &dfirst_);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) g_[b * L * H + h] += dfirst_[b * H + h];
  }
  for (int64_t l = config_.num_layers - 1; l >= 0; --l) {
    blocks_[l]->backward(g_, g2_);
    std::swap(g_, g2_);
  }
  embeddings_.backward(g_, ddense);
}

}  // namespace sparsemoe
