// lingvo SharedEmbeddingSoftmaxLayer: lookup and tied softmax loss (see
// shared_embedding_softmax.h and spec §13).
#include "sparsemoe/lingvo/shared_embedding_softmax.h"

#include <cmath>
#include <cstring>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/kernels.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

SharedEmbeddingSoftmaxConfig SharedEmbeddingSoftmaxConfig::from_json(const nlohmann::json& j) {
  SharedEmbeddingSoftmaxConfig c;
  config_read(j, "SharedEmbeddingSoftmaxConfig", c);
  c.validate();
  return c;
}

SharedEmbeddingSoftmax::SharedEmbeddingSoftmax(const SharedEmbeddingSoftmaxConfig& config)
    : config_((config.validate(), config)) {
  const int64_t V = config.vocab_size, D = config.embedding_dim;
  embedding = Tensor({V, D});
  pos_emb = Tensor({config.max_len, D});
  embedding_grad = Tensor({V, D});
  pos_emb_grad = Tensor({config.max_len, D});
  fill_normal(embedding, config.init_stddev, derive_key(config.seed, 0x454d42));
  fill_normal(pos_emb, config.init_stddev, derive_key(config.seed, 0x504f53));
}

std::vector<ParamRef> SharedEmbeddingSoftmax::params() {
  return {{"embedding", &embedding, &embedding_grad}, {"pos_emb", &pos_emb, &pos_emb_grad}};
}

void SharedEmbeddingSoftmax::forward(const Tensor& ids, const Tensor& segment_pos, Tensor& out) {
  check_arg(ids.rank() == 2, "ids: expected shape [B, L], got " + shape_str(ids.shape()));
  check_shape("segment_pos", segment_pos.shape(), ids.shape(), "[B, L] like ids");
  const int64_t D = config_.embedding_dim;
  ids_ = read_ids(ids, config_.vocab_size, "ids");
  pos_ = read_ids(segment_pos, config_.max_len, "segment_pos");
  out.resize({ids.dim(0), ids.dim(1), D});
  for (size_t n = 0; n < ids_.size(); ++n)
    for (int64_t d = 0; d < D; ++d)
      out[n * D + d] = embedding[ids_[n] * D + d] + pos_emb[pos_[n] * D + d];
}

void SharedEmbeddingSoftmax::backward(const Tensor& dout) {
  const int64_t D = config_.embedding_dim, N = static_cast<int64_t>(ids_.size());
  check_arg(N > 0, "SharedEmbeddingSoftmax::backward: call forward first");
  check_arg(dout.rank() == 3 && dout.dim(2) == D && dout.numel() == N * D,
            "dout: expected shape [B, L, D] of the last forward (" + std::to_string(N) +
                " tokens, D=" + std::to_string(D) + "), got " + shape_str(dout.shape()));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      embedding_grad[ids_[n] * D + d] += dout[n * D + d];
      pos_emb_grad[pos_[n] * D + d] += dout[n * D + d];
    }
}

SoftmaxLossResult SharedEmbeddingSoftmax::compute_loss(const Tensor& activation,
                                                       const Tensor& labels,
                                                       const Tensor& segment_ids) {
  const int64_t V = config_.vocab_size, D = config_.embedding_dim;
  check_arg(activation.rank() == 3 && activation.dim(2) == D,
            "activation: expected shape [B, L, D=" + std::to_string(D) + "], got " +
                shape_str(activation.shape()));
  const int64_t B = activation.dim(0), L = activation.dim(1), N = B * L;
  check_shape("labels", labels.shape(), {B, L}, "[B, L]");
  check_shape("segment_ids", segment_ids.shape(), {B, L}, "[B, L]");
  labels_ = read_ids(labels, V, "labels");
  act_.resize(activation.shape());  // a copy, not a pointer into the caller's activation
  std::copy_n(activation.data(), activation.numel(), act_.data());
  act_shape_ = activation.shape();
  nonpad_.resize(N);
  for (int64_t n = 0; n < N; ++n) nonpad_[n] = segment_ids[n] != 0.f ? 1.f : 0.f;

  // logits = (activation * D^-0.5) . embedding^T, optionally clipped.
  // On the engine's GEMM kernel, in tiles over the threads: its bits do not depend on the SIMD
  // level or the BLAS library (a library's kernels, chosen by CPU, round differently).
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  raw_logits_.resize({N, V});
  const int64_t rows[2] = {0, N};
  float* raw_logits = raw_logits_.data();
  for_tiles(row_tiles(rows, 1), V, [&](const RowTile& t, int64_t c0, int64_t c1) {
    float* out = raw_logits + t.begin * V + c0;
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t nr, int64_t j0, int64_t nc) {
      for (int64_t r = r0; r < r0 + nr; ++r)
        for (int64_t j = j0; j < j0 + nc; ++j) out[r * V + j] *= scale;
    };
    kernel_gemm(t.end - t.begin, c1 - c0, D, MatRef::rows(activation.data() + t.begin * D, D),
                MatRef::transposed(embedding.data() + c0 * D, D), out, V, false, &epilogue);
  });
  probs_.resize({N, V});
  lse_.resize(N);
  const float clip = static_cast<float>(config_.logits_abs_max);
  const double ls = config_.label_smoothing, off = ls / V, on = 1.0 - ls + off;
  const double zc = config_.z_loss_coef;
  double sum_loss = 0, sum_z = 0, sum_xent = 0, sum_soft = 0, sum_nonpad = 0;
  std::vector<double> row_loss(B, 0.0), row_nonpad(B, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    float* p = probs_.data() + n * V;
    const float* raw = raw_logits_.data() + n * V;
    double logit_sum = 0;
    for (int64_t v = 0; v < V; ++v) {
      p[v] = clip > 0 ? std::min(std::max(raw[v], -clip), clip) : raw[v];
      logit_sum += p[v];
    }
    const float logit_label = p[labels_[n]];
    const float lse = logsumexp(p, V);
    lse_[n] = lse;
    for (int64_t v = 0; v < V; ++v) p[v] = std::exp(p[v] - lse);
    const double xent = lse - logit_label;  // one-hot cross-entropy
    // Soft-target cross-entropy: sum_v target_v (lse - logit_v), targets summing to 1.
    const double soft = lse - (off * logit_sum + (on - off) * logit_label);
    const double z = zc > 0 ? zc * static_cast<double>(lse) * lse : 0.0;
    const double w = nonpad_[n];
    sum_loss += (soft + z) * w;
    sum_z += z * w;
    sum_xent += xent * w;
    sum_soft += soft * w;
    sum_nonpad += w;
    row_loss[n / L] += (soft + z) * w;
    row_nonpad[n / L] += w;
  }
  const bool by_size = config_.use_tgt_labels_size_as_loss_denominator;
  denom_ = by_size ? static_cast<double>(N) : sum_nonpad;
  auto div = [](double a, double b) { return b != 0 ? a / b : 0.0; };  // 0/0 reports 0
  SoftmaxLossResult res;
  res.metrics["mean_xent"] = {div(sum_xent, sum_nonpad), sum_nonpad};
  res.metrics["soft_targets_xent"] = {div(sum_soft, sum_nonpad), sum_nonpad};
  res.metrics["weight"] = {sum_nonpad, 1.0};
  res.metrics["loss"] = {div(sum_loss, denom_), 1.0};
  res.metrics["avg_z_loss_inc"] = {div(sum_z, denom_), 1.0};
  res.per_example_loss.resize(B);
  for (int64_t b = 0; b < B; ++b)
    res.per_example_loss[b] = div(row_loss[b], by_size ? static_cast<double>(L) : row_nonpad[b]);
  return res;
}

void SharedEmbeddingSoftmax::compute_loss_backward(double dloss, Tensor& dactivation) {
  check_arg(!act_shape_.empty(), "compute_loss_backward: call compute_loss first");
  const int64_t V = config_.vocab_size, D = config_.embedding_dim,
                N = act_shape_[0] * act_shape_[1];
  const double ls = config_.label_smoothing, off = ls / V, on = 1.0 - ls + off;
  const double zc = config_.z_loss_coef;
  const float clip = static_cast<float>(config_.logits_abs_max);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  dlogits_.resize({N, V});
  for (int64_t n = 0; n < N; ++n) {
    float* g = dlogits_.data() + n * V;
    const double w = denom_ != 0 ? dloss * nonpad_[n] / denom_ : 0.0;
    const float* p = probs_.data() + n * V;
    const float* raw = raw_logits_.data() + n * V;
    for (int64_t v = 0; v < V; ++v) {
      const double target = v == labels_[n] ? on : off;
      double d = w * (p[v] - target + 2.0 * zc * lse_[n] * p[v]);
      if (clip > 0 && (raw[v] > clip || raw[v] < -clip)) d = 0;  // clipped: no gradient
      g[v] = static_cast<float>(d * scale);  // the logits' scale, applied once here
    }
  }
  // dactivation = g . embedding; embedding_grad += g^T . activation (tiles over the vocabulary).
  dactivation.resize(act_shape_);
  const int64_t rows[2] = {0, N};
  for_tiles(row_tiles(rows, 1), D, [&](const RowTile& t, int64_t c0, int64_t c1) {
    kernel_gemm(t.end - t.begin, c1 - c0, V, MatRef::rows(dlogits_.data() + t.begin * V, V),
                MatRef::rows(embedding.data() + c0, D), dactivation.data() + t.begin * D + c0, D,
                false);
  });
  add_weight_grad(rows, 1, dlogits_.data(), V, act_.data(), D, embedding_grad.data());
}

}  // namespace sparsemoe
