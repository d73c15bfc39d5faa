// lingvo's SharedEmbeddingSoftmaxLayer (spec §13): one embedding table [V, D] used both for the
// input lookup (plus a positional table [max_len, D]) and, tied, for the output softmax, whose
// ComputeLoss has the D^-0.5 scaling, optional logits clipping, label smoothing, the z-loss
// (coef * logsumexp^2), two loss denominators, per-example losses and lingvo's metrics with their
// weights. Forward and backward for both the lookup and the loss.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

struct SharedEmbeddingSoftmaxConfig {
  int64_t vocab_size = 0;     // V
  int64_t max_len = 0;        // positions
  int64_t embedding_dim = 0;  // D
  double z_loss_coef = 1e-4;
  double logits_abs_max = 0.0;  // > 0: clip logits to [-max, max]; 0: no clipping (lingvo None)
  double label_smoothing = 0.1;
  bool use_tgt_labels_size_as_loss_denominator = true;  // B*L; false: non-padding tokens
  double init_stddev = 1.0;                             // lingvo WeightInit.Gaussian()
  uint64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v("vocab_size", vocab_size, "V", at_least(1));
    v("max_len", max_len, "positions", at_least(1));
    v("embedding_dim", embedding_dim, "D", at_least(1));
    v("z_loss_coef", z_loss_coef, "weight of the z-loss", at_least(0));
    v("logits_abs_max", logits_abs_max, "> 0: clip logits to [-max, max]; 0: no clipping",
      at_least(0));
    v("label_smoothing", label_smoothing, "label smoothing", in_closed(0, 1));
    v("use_tgt_labels_size_as_loss_denominator", use_tgt_labels_size_as_loss_denominator,
      "loss denominator B*L; false: the non-padding tokens");
    v("init_stddev", init_stddev, "Gaussian init stddev (lingvo's default 1)", at_least(0));
    v("seed", seed, "initialisation");
  }
  nlohmann::json to_json() const { return config_to_json(*this); }
  static SharedEmbeddingSoftmaxConfig from_json(const nlohmann::json& j);  // strict keys
  void validate() const { check_fields(*this, "SharedEmbeddingSoftmaxConfig"); }
};

// What ComputeLoss returns: metrics as (value, weight) pairs, and the per-example loss [B].
struct SoftmaxLossResult {
  std::map<std::string, std::pair<double, double>> metrics;  // mean_xent, soft_targets_xent,
                                                             // weight, loss, avg_z_loss_inc
  std::vector<double> per_example_loss;                      // [B]
  double loss() const { return metrics.at("loss").first; }
};

class SharedEmbeddingSoftmax {
 public:
  explicit SharedEmbeddingSoftmax(const SharedEmbeddingSoftmaxConfig& config);

  // FProp: ids [B, L] and segment_pos [B, L] (integers stored as floats) -> out [B, L, D] =
  // embedding[ids] + pos_emb[segment_pos].
  void forward(const Tensor& ids, const Tensor& segment_pos, Tensor& out);
  // Accumulates the embedding and positional gradients from dout [B, L, D].
  void backward(const Tensor& dout);

  // ComputeLoss: activation [B, L, D], labels [B, L], segment_ids [B, L] (0 = padding).
  SoftmaxLossResult compute_loss(const Tensor& activation, const Tensor& labels,
                                 const Tensor& segment_ids);
  // Gradient of dloss * loss: d activation (overwritten) and the tied embedding's gradient.
  void compute_loss_backward(double dloss, Tensor& dactivation);

  std::vector<ParamRef> params();
  const SharedEmbeddingSoftmaxConfig& config() const { return config_; }

  Tensor embedding, pos_emb;            // [V, D], [max_len, D]
  Tensor embedding_grad, pos_emb_grad;  // accumulated

 private:
  SharedEmbeddingSoftmaxConfig config_;
  std::vector<int64_t> ids_, pos_;  // saved lookups [B*L]
  // Saved by compute_loss.
  Tensor act_;  // [B, L, D] the activation compute_loss saw (a copy)
  Shape act_shape_;
  Tensor probs_;                 // [N, V] softmax of the (clipped) logits
  Tensor raw_logits_;            // [N, V] before clipping
  std::vector<float> lse_;       // [N]
  std::vector<int64_t> labels_;  // [N]
  std::vector<float> nonpad_;    // [N]
  double denom_ = 1;
  Tensor dlogits_;  // [N, V] dloss/dlogits times the logits' scale D^-0.5
};

}  // namespace sparsemoe
