// Sparse Mixer input embeddings (see embeddings.h).
#include "sparsemoe/nn/embeddings.h"

#include <cmath>
#include <cstring>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

namespace {

constexpr uint64_t kDropoutTag = 0x454d4244;

}  // namespace

Embeddings::Embeddings(const EmbeddingsConfig& c)
    : word({c.vocab_size, c.width()}),
      position({c.max_sequence_length, c.width()}),
      type({c.type_vocab_size, c.width()}),
      word_grad(word.shape()),
      position_grad(position.shape()),
      type_grad(type.shape()),
      config_(c),
      norm_(c.width(), 1e-12) {
  check_arg(c.vocab_size >= 1 && c.hidden_size >= 1 && c.max_sequence_length >= 1 &&
                c.type_vocab_size >= 1,
            "EmbeddingsConfig: vocab_size, hidden_size, max_sequence_length and type_vocab_size "
            "must be >= 1");
  check_arg(c.dropout >= 0 && c.dropout < 1, "EmbeddingsConfig: dropout must lie in [0, 1)");
  fill_truncated_normal(word, c.init_stddev, derive_key(c.seed, 1));
  fill_truncated_normal(position, c.init_stddev, derive_key(c.seed, 2));
  fill_truncated_normal(type, c.init_stddev, derive_key(c.seed, 3));
  if (c.width() != c.hidden_size)
    projection_ = std::make_unique<Dense>(c.width(), c.hidden_size, Activation::kLinear, true,
                                          c.init_stddev, derive_key(c.seed, 4));
}

std::vector<ParamRef> Embeddings::params() {
  std::vector<ParamRef> p = {{"word_embeddings/embeddings", &word, &word_grad},
                             {"position_embedding/embeddings", &position, &position_grad},
                             {"type_embeddings/embeddings", &type, &type_grad}};
  for (auto& r : prefixed("embeddings/layer_norm", norm_.params())) p.push_back(r);
  if (projection_)
    for (auto& r : prefixed("embedding_projection", projection_->params())) p.push_back(r);
  return p;
}

void Embeddings::forward(const Tensor& ids, const Tensor& type_ids, const Tensor* dense,
                         const Tensor* dense_type_ids, Tensor& out, const ForwardOptions& opt) {
  const int64_t W = config_.width(), Lmax = config_.max_sequence_length;
  check_arg(ids.rank() == 2,
            "input_word_ids: expected shape [B, L], got " + shape_str(ids.shape()));
  check_shape("input_type_ids", type_ids.shape(), ids.shape(), "[B, L] like input_word_ids");
  B_ = ids.dim(0), Lt_ = ids.dim(1), Ld_ = 0;
  if (dense) {
    check_arg(dense->rank() == 3 && dense->dim(0) == B_ && dense->dim(2) == W,
              "dense_inputs: expected shape [B=" + std::to_string(B_) +
                  ", Ld, W=" + std::to_string(W) + "], got " + shape_str(dense->shape()));
    Ld_ = dense->dim(1);
    check_arg(dense_type_ids != nullptr, "dense_type_ids: required with dense_inputs");
    check_shape("dense_type_ids", dense_type_ids->shape(), {B_, Ld_}, "[B, Ld]");
  }
  const int64_t L = Lt_ + Ld_;
  check_arg(L == Lmax, "input length: the sequence (" + std::to_string(Lt_) + " tokens" +
                           (Ld_ ? " + " + std::to_string(Ld_) + " dense inputs" : "") +
                           ") must equal max_sequence_length=" + std::to_string(Lmax));
  ids_ = read_ids(ids, config_.vocab_size, "input_word_ids");
  const std::vector<int64_t> t1 = read_ids(type_ids, config_.type_vocab_size, "input_type_ids");
  std::vector<int64_t> t2;
  if (dense) t2 = read_ids(*dense_type_ids, config_.type_vocab_size, "dense_type_ids");
  types_.resize(B_ * L);
  sum_.resize({B_, L, W});
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const bool tok = l < Lt_;
      const int64_t ty = tok ? t1[b * Lt_ + l] : t2[b * Ld_ + (l - Lt_)];
      types_[b * L + l] = ty;
      const float* src =
          tok ? word.data() + ids_[b * Lt_ + l] * W : dense->data() + (b * Ld_ + (l - Lt_)) * W;
      float* o = sum_.data() + (b * L + l) * W;
      for (int64_t w = 0; w < W; ++w) o[w] = src[w] + position[l * W + w] + type[ty * W + w];
    }
  norm_.forward(sum_, normed_);
  drop_ = opt.training && config_.dropout > 0;
  drop_key_ = derive_key(config_.seed, kDropoutTag, opt.step);
  drop_offset_ = static_cast<uint64_t>(opt.token_offset * W);
  const Tensor* pre = &normed_;
  if (drop_) {
    const float rate = static_cast<float>(config_.dropout);
    dropped_.resize(normed_.shape());
    dropout_span(drop_key_, drop_offset_, rate, normed_.data(), dropped_.data(), normed_.numel());
    pre = &dropped_;
  }
  if (projection_) {
    projection_->forward(*pre, out, opt.save_for_backward);
  } else {
    out = *pre;
  }
}

void Embeddings::backward(const Tensor& dout, Tensor* ddense) {
  const int64_t W = config_.width(), L = Lt_ + Ld_;
  check_arg(B_ > 0, "Embeddings::backward: call forward first");
  check_shape("dout", dout.shape(), {B_, L, config_.hidden_size}, "[B, L, H]");
  const Tensor* g = &dout;
  if (projection_) {
    projection_->backward(dout, &grad_);
    g = &grad_;
  }
  if (drop_) {
    const float rate = static_cast<float>(config_.dropout);
    grad2_.resize(g->shape());
    dropout_span(drop_key_, drop_offset_, rate, g->data(), grad2_.data(), g->numel());
    g = &grad2_;
  }
  norm_.backward(*g, dsum_);
  if (ddense && Ld_) ddense->resize({B_, Ld_, W});
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t l = 0; l < L; ++l) {
      const float* d = dsum_.data() + (b * L + l) * W;
      for (int64_t w = 0; w < W; ++w) {
        position_grad[l * W + w] += d[w];
        type_grad[types_[b * L + l] * W + w] += d[w];
      }
      if (l < Lt_) {
        float* row = word_grad.data() + ids_[b * Lt_ + l] * W;
        for (int64_t w = 0; w < W; ++w) row[w] += d[w];
      } else if (ddense) {
        std::memcpy(ddense->data() + (b * Ld_ + (l - Lt_)) * W, d, W * sizeof(float));
      }
    }
}

}  // namespace sparsemoe
