// The Sparse Mixer's input embeddings (tf-models SparseMixer, spec §12.1): word + learned
// position + type embeddings of width W, LayerNorm (eps 1e-12), dropout, and a Dense projection
// W -> H only when W != H (the factorised width). With dense inputs, caller-given embeddings [B,
// Ld, W] (and their type ids) are appended after the token embeddings. The total length must equal
// max_sequence_length, as the reference sources' ensure_shape demands.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/dense.h"
#include "sparsemoe/nn/layer_common.h"
#include "sparsemoe/nn/layer_norm.h"

namespace sparsemoe {

struct EmbeddingsConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 512;    // H
  int64_t embedding_width = 0;  // W; 0 means H (no projection)
  int64_t max_sequence_length = 512;
  int64_t type_vocab_size = 16;
  double dropout = 0.1;
  double init_stddev = 0.02;  // TruncatedNormal
  uint64_t seed = 0;
  int64_t width() const { return embedding_width > 0 ? embedding_width : hidden_size; }
};

class Embeddings {
 public:
  explicit Embeddings(const EmbeddingsConfig& config);

  // ids, type_ids [B, Lt] (integers as floats); dense [B, Ld, W] and dense_type_ids [B, Ld] or
  // null. Lt + Ld must equal max_sequence_length. out [B, L, H].
  void forward(const Tensor& ids, const Tensor& type_ids, const Tensor* dense,
               const Tensor* dense_type_ids, Tensor& out, const ForwardOptions& opt);
  // dout [B, L, H]; accumulates the tables' gradients; ddense (if not null) gets the gradient of
  // the dense inputs.
  void backward(const Tensor& dout, Tensor* ddense);

  std::vector<ParamRef> params();
  // Packs the weights its GEMMs read for inference; returns the bytes packed (see
  // Dense::prepare_inference: dropped by params() and backward).
  int64_t prepare_inference() {
    if (!projection_) return 0;
    projection_->prepare_inference();
    return projection_->packed_bytes();
  }
  const EmbeddingsConfig& config() const { return config_; }

  Tensor word, position, type;  // [V, W], [max_len, W], [type_vocab, W]
  Tensor word_grad, position_grad, type_grad;

 private:
  EmbeddingsConfig config_;
  LayerNorm norm_;
  std::unique_ptr<Dense> projection_;  // only when W != H
  std::vector<int64_t> ids_, types_;   // [B*Lt], [B*L]
  int64_t B_ = 0, Lt_ = 0, Ld_ = 0;
  bool drop_ = false;
  uint64_t drop_key_ = 0;
  uint64_t drop_offset_ = 0;  // the first element's counter: keyed by global token
  Tensor sum_, normed_, dropped_, grad_, grad2_, dsum_;  // [B, L, W] workspaces
};

}  // namespace sparsemoe
