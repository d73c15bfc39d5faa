// Task heads on the Sparse Mixer encoder, with their losses (spec §12.2): the masked-LM head
// (gather masked positions -> Dense(H -> W) -> activation -> LayerNorm -> logits against the tied
// word-embedding table [V, W] + output bias [V]) and the sequence-classification head on the
// pooled output (dropout -> Dense(H -> num_classes), as tf-models BertClassifier). Both have
// forward and backward; the tied table's gradient goes to the embeddings' word_grad.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/dense.h"
#include "sparsemoe/nn/layer_common.h"
#include "sparsemoe/nn/layer_norm.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

// Weighted mean softmax cross-entropy over rows: logits [N, C], labels [N] in [0, C), weights
// [N] (null: all 1). loss = sum_i w_i * CE_i / sum_i w_i (0 when every weight is 0). When dlogits
// is given it receives d loss / d logits [N, C]. Also counts correct argmax predictions
// (weighted) into *correct when given. weight_total >= 0 replaces sum_i w_i as the normaliser:
// data parallelism gives each part of a batch the whole batch's total, so that the parts' losses
// and gradients are their shares of the batch's.
double softmax_cross_entropy(const Tensor& logits, const std::vector<int64_t>& labels,
                             const float* weights, Tensor* dlogits, double* correct = nullptr,
                             double weight_total = -1);

class MaskedLmHead {
 public:
  // hidden H, embedding width W (the tied table's), vocab V.
  MaskedLmHead(int64_t hidden, int64_t width, int64_t vocab, Activation activation,
               double init_stddev, uint64_t seed);

  // sequence [B, L, H]; positions [B, P] (integer positions in [0, L)); table [V, W] -> logits
  // [B, P, V].
  void forward(const Tensor& sequence, const Tensor& positions, const Tensor& table,
               Tensor& logits);
  // dlogits [B, P, V] -> adds into dsequence [B, L, H] (must have the sequence's shape) and into
  // dtable [V, W] (the embeddings' word_grad); accumulates the head's own gradients. table is the
  // one forward saw (the head keeps no pointer to the embeddings' weights).
  void backward(const Tensor& dlogits, const Tensor& table, Tensor& dsequence, Tensor& dtable);

  std::vector<ParamRef> params();
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() {
    transform_.prepare_inference();
    return transform_.packed_bytes();
  }

  Tensor output_bias, output_bias_grad;  // [V]

 private:
  int64_t H_, W_, V_;
  Dense transform_;
  LayerNorm norm_;
  Shape seq_shape_;               // [B, L, H] of the last forward
  std::vector<int64_t> rows_;     // [B*P] flat row b*L + p of each gathered position
  Tensor gathered_, t_, n_;       // [B, P, H], [B, P, W], [B, P, W]
  Tensor dn_, dt_, dg_;           // backward workspaces
  std::vector<int64_t> offsets_;  // {0, B*P}: one group of rows for the tiled GEMM
};

class ClassificationHead {
 public:
  ClassificationHead(int64_t hidden, int64_t num_classes, double dropout, double init_stddev,
                     uint64_t seed);

  // pooled [B, H] -> logits [B, num_classes]; dropout in training.
  void forward(const Tensor& pooled, Tensor& logits, const ForwardOptions& opt = {});
  // dlogits -> dpooled (overwritten); accumulates the dense layer's gradients.
  void backward(const Tensor& dlogits, Tensor& dpooled);

  std::vector<ParamRef> params() { return prefixed("classifier", dense_.params()); }
  int64_t num_classes() const { return dense_.out(); }
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() {
    dense_.prepare_inference();
    return dense_.packed_bytes();
  }

 private:
  double dropout_;
  uint64_t seed_;
  Dense dense_;
  bool drop_ = false;
  uint64_t drop_key_ = 0;
  uint64_t drop_offset_ = 0;  // keyed by global sequence
  Tensor dropped_;            // [B, H]
};

}  // namespace sparsemoe
