// The Sparse Mixer encoder network (tf-models SparseMixer, spec §12; diagram in
// docs/sparse_mixer.md): embeddings -> num_layers EncoderBlocks (mixing or attention, dense FFN or
// MoE, by layer index) -> sequence output, pooled output tanh(Dense(h[:, 0])), every layer's
// output, and the MoE losses and metrics per MoE layer and in total. The config reads the reference
// sources' keyword names from JSON, strictly (unknown keys are errors).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/models/encoder_block.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/nn/dense.h"
#include "sparsemoe/nn/embeddings.h"
#include "sparsemoe/nn/mixing.h"

namespace sparsemoe {

// The paper code's placement rule (GR-sm `_is_replacement_layer`) for n of N layers:
// "bottom" l < n; "middle" N-n <= 2l < N+n; "mixed" l % (N/n) == 0; "top" l >= N-n.
std::vector<int64_t> layer_layout(const std::string& layout, int64_t num_layers, int64_t count);

struct SparseMixerConfig {
  int64_t vocab_size = 0;  // required
  int64_t hidden_size = 512;
  int64_t num_layers = 14;
  std::vector<int64_t> moe_layers = {5, 6, 7, 8};
  std::vector<int64_t> attention_layers = {10, 11, 12, 13};
  MixingMechanism mixing_mechanism = MixingMechanism::kLinear;
  bool use_fft = false;
  int64_t num_attention_heads = 8;
  int64_t max_sequence_length = 512;
  int64_t type_vocab_size = 16;
  int64_t inner_dim = 2048;
  std::string inner_activation = "gelu_tanh";
  double output_dropout = 0.1;
  double attention_dropout = 0.1;
  double initializer_range = 0.02;  // TruncatedNormal stddev for every weight
  int64_t output_range = 0;         // 0: the whole sequence; else sequence_output [:, :range]
  int64_t embedding_width = 0;      // 0: hidden_size (no projection)
  bool norm_first = false;
  bool with_dense_inputs = false;
  bool export_metrics = true;  // false: per-layer metrics are not reported (losses still are)
  // The MoE layers' config. The network sets these of its keys itself (see moe_layer()): name,
  // hidden_size, seed, experts.{d_ff, activation, output_dropout, kernel_init_stddev} (from
  // inner_dim, inner_activation, output_dropout, initializer_range) and router.kernel_init_stddev.
  MoeLayerConfig moe = default_moe();
  bool tf_models_compat = false;  // reproduce the tf-models code's wiring quirks (spec §12.1)
  uint64_t seed = 0;              // initialisation and dropout/jitter streams

  template <class V>
  void fields(V& v) {
    Section<MoeLayerConfig> m{
        moe,
        {"name", "hidden_size", "seed", "experts.d_ff", "experts.activation",
         "experts.output_dropout", "experts.kernel_init_stddev", "router.kernel_init_stddev"},
        "the network (hidden_size, seed, inner_dim, inner_activation, "
        "output_dropout, initializer_range)"};
    v("vocab_size", vocab_size, "token vocabulary (training: the tokenizer's)", at_least(1));
    v("hidden_size", hidden_size, "H", at_least(1));
    v("num_layers", num_layers, "encoder layers", at_least(0));
    v("moe_layers", moe_layers,
      "indices of the MoE layers, or {\"layout\": L, \"count\": n}, L one of bottom, middle, "
      "mixed, top",
      at_least(0));
    v("attention_layers", attention_layers, "indices of the attention layers (or a layout)",
      at_least(0));
    v("mixing_mechanism", mixing_mechanism, "token mixing of the other layers",
      kMixingMechanisms.rule());
    v("use_fft", use_fft, "Fourier / Hartley by FFT instead of DFT matrices");
    v("num_attention_heads", num_attention_heads, "heads of the attention layers", at_least(1));
    v("max_sequence_length", max_sequence_length, "L, the mixing layers' fixed length",
      at_least(1));
    v("type_vocab_size", type_vocab_size, "token type vocabulary", at_least(1));
    v("inner_dim", inner_dim, "F of the dense FFNs and of the experts", at_least(1));
    v("inner_activation", inner_activation, "activation of the FFNs and experts",
      kActivations.rule());
    v("output_dropout", output_dropout, "dropout on embeddings, FFN and expert outputs",
      in_half_open(0, 1));
    v("attention_dropout", attention_dropout, "dropout on attention probabilities",
      in_half_open(0, 1));
    v("initializer_range", initializer_range, "TruncatedNormal stddev of every weight", above(0));
    v("output_range", output_range, "0: the whole sequence; else the first n positions",
      at_least(0));
    v("embedding_width", embedding_width, "0: hidden_size; else embeddings projected to H",
      at_least(0));
    v("norm_first", norm_first, "pre-LN blocks");
    v("with_dense_inputs", with_dense_inputs, "dense inputs appended after the tokens");
    v("export_metrics", export_metrics, "report the MoE metrics per layer");
    v("moe", m, "the MoE layers (MoeLayerConfig without the keys the network sets)");
    v("tf_models_compat", tf_models_compat, "the tf-models code's wiring quirks (spec §12.1)");
    v("seed", seed, "initialisation and dropout / jitter streams");
  }
  static MoeLayerConfig default_moe();  // 16 experts, the reference sources' defaults
  // The config of the MoE layer at index l, with the keys the network sets filled in.
  MoeLayerConfig moe_layer(int64_t l) const;
  nlohmann::json to_json() const { return config_to_json(*this); }
  static SparseMixerConfig from_json(const nlohmann::json& j);  // strict; validates
  void validate() const;
  bool is_moe_layer(int64_t l) const;
  bool is_attention_layer(int64_t l) const;
  // Floats the network holds: parameters plus the DFT matrices of non-FFT mixing (an estimate in
  // double, so that no product of hostile sizes can overflow). SparseMixer refuses, before
  // allocating, a config whose weights and gradients do not fit the machine's memory.
  double float_count() const;
  // Of those, the MoE layers' expert FFNs: all of them, or with experts split over `procs`
  // processes, the largest process's share (ceil(E / procs) experts of each layer).
  double expert_float_count(int64_t procs = 1) const;
};

// MoE losses and metrics of one forward: one entry per MoE layer (in layer order) and totals.
// Losses are summed over layers (as the paper's training code does); the ratio metrics and the
// tokens per expert are averaged over layers (as t5x does).
struct SparseMixerMetrics {
  std::vector<int64_t> moe_layer_index;  // which encoder layer each entry is
  std::vector<MoeMetrics> per_layer;     // empty when export_metrics is false
  double load_balancing_loss = 0;        // sum, unscaled
  double router_z_loss = 0;              // sum, scaled
  double unscaled_router_z_loss = 0;     // sum
  double fraction_tokens_left_behind = 0, router_confidence = 0, expert_usage = 0;  // mean
  double loss = 0;  // what the MoE layers add to the training loss (weighted, summed)
  nlohmann::json to_json() const;  // {"total": {...}, "layer_5": {...}, ...}
};

// Adds the losses and ratios that MoeMetrics and SparseMixerMetrics both carry (for totals over
// layers and means over steps).
template <class To, class From>
void add_common_moe_metrics(To& to, const From& from) {
  to.load_balancing_loss += from.load_balancing_loss;
  to.router_z_loss += from.router_z_loss;
  to.unscaled_router_z_loss += from.unscaled_router_z_loss;
  to.fraction_tokens_left_behind += from.fraction_tokens_left_behind;
  to.router_confidence += from.router_confidence;
  to.expert_usage += from.expert_usage;
  to.loss += from.loss;
}

// The network's inputs. Only input_word_ids is required: a null mask means every token is real,
// null type ids mean type 0. Dense inputs need with_dense_inputs and are appended after the
// tokens; their length plus the tokens' must equal max_sequence_length.
struct SparseMixerInputs {
  const Tensor* input_word_ids = nullptr;  // [B, Lt] integer ids
  const Tensor* input_mask = nullptr;      // [B, Lt] 1 = real token, 0 = padding
  const Tensor* input_type_ids = nullptr;  // [B, Lt]
  const Tensor* dense_inputs = nullptr;    // [B, Ld, W]
  const Tensor* dense_mask = nullptr;      // [B, Ld]
  const Tensor* dense_type_ids = nullptr;  // [B, Ld]
};

class SparseMixer {
 public:
  // placement: every MoE layer holds all experts, or one process's (ExpertPlacement).
  explicit SparseMixer(const SparseMixerConfig& config, ExpertPlacement placement = {});

  SparseMixerMetrics forward(const SparseMixerInputs& in, const ForwardOptions& opt = {});
  // dsequence [B, Lout, H] and/or dpooled [B, H] (either may be null) -> accumulates every
  // parameter's gradient, the MoE losses' included. ddense_inputs, if given, gets the dense
  // inputs' gradient.
  void backward(const Tensor* dsequence, const Tensor* dpooled, Tensor* ddense_inputs = nullptr);

  const Tensor& sequence_output() const;                   // [B, Lout, H]; Lout = output_range or L
  const Tensor& pooled_output() const { return pooled_; }  // [B, H]
  // Layer l's output [B, L, H], l in [0, num_layers).
  const Tensor& encoder_output(int64_t l) const { return hidden_.at(l + 1); }
  const Tensor& attention_mask() const { return mask_; }  // [B, L, L] of the last forward

  std::vector<ParamRef> params();
  int64_t count_params() { return sparsemoe::count_params(params()); }
  // Packs every weight the GEMM kernel reads as B (projections, FFNs, experts, pooler) once for
  // inference: forward then reads the packed copies instead of packing per call. Returns the
  // bytes packed (one more copy of those weights). The copies are dropped by params() and by
  // backward, the ways weights change; whoever writes a weight directly afterwards calls
  // params() (or this again).
  int64_t prepare_inference();
  const SparseMixerConfig& config() const { return config_; }
  Embeddings& embeddings() { return embeddings_; }
  EncoderBlock& block(int64_t l) { return *blocks_.at(l); }

 private:
  bool slices_output() const;  // output_range in effect

  SparseMixerConfig config_;
  Embeddings embeddings_;
  std::vector<std::unique_ptr<EncoderBlock>> blocks_;
  Dense pooler_;
  // Saved by forward.
  Tensor type_zeros_;           // [B, Lt] when no type ids are given
  Tensor mask_, paddings_;      // [B, L, L] attention mask; [B, L] paddings (top2 MoE only)
  std::vector<Tensor> hidden_;  // num_layers + 1 of [B, L, H]: embeddings, then each layer
  Tensor sliced_;               // [B, output_range, H] when output_range is set
  Tensor first_, pooled_;       // [B, H]
  Tensor g_, g2_, dfirst_;      // backward workspaces
  bool saved_ = false;          // the last forward completed and saved for a backward
};

}  // namespace sparsemoe
