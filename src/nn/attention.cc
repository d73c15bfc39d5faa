// Multi-head self-attention forward/backward (see attention.h).
#include "sparsemoe/nn/attention.h"

#include <cmath>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

namespace {
constexpr uint64_t kDropTag = 0x41545444;
constexpr float kMaskedScore = -1e9f;  // Keras' large negative for float32
}  // namespace

SelfAttention::SelfAttention(int64_t hidden, int64_t num_heads, double dropout, double init_stddev,
                             uint64_t seed)
    : H_(hidden),
      heads_(num_heads),
      dh_(num_heads > 0 ? hidden / num_heads : 0),
      dropout_(dropout),
      seed_(seed),
      q_(hidden, hidden, Activation::kLinear, true, init_stddev, derive_key(seed, 1)),
      k_(hidden, hidden, Activation::kLinear, true, init_stddev, derive_key(seed, 2)),
      v_(hidden, hidden, Activation::kLinear, true, init_stddev, derive_key(seed, 3)),
      o_(hidden, hidden, Activation::kLinear, true, init_stddev, derive_key(seed, 4)) {
  check_arg(num_heads >= 1 && hidden % num_heads == 0,
            "SelfAttention: num_heads (" + std::to_string(num_heads) +
                ") must divide the hidden size (" + std::to_string(hidden) + ")");
  check_arg(dropout >= 0 && dropout < 1, "SelfAttention: dropout must lie in [0, 1)");
}

std::vector<ParamRef> SelfAttention::params() {
  std::vector<ParamRef> p;
  for (auto& r : prefixed("query", q_.params())) p.push_back(r);
  for (auto& r : prefixed("key", k_.params())) p.push_back(r);
  for (auto& r : prefixed("value", v_.params())) p.push_back(r);
  for (auto& r : prefixed("attention_output", o_.params())) p.push_back(r);
  return p;
}

Tensor attention_mask_from_padding(const Tensor& input_mask) {
  check_arg(input_mask.rank() == 2,
            "input_mask: expected shape [B, L], got " + shape_str(input_mask.shape()));
  const int64_t B = input_mask.dim(0), L = input_mask.dim(1);
  Tensor m({B, L, L});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i)
      for (int64_t j = 0; j < L; ++j) m[(b * L + i) * L + j] = input_mask[b * L + j];
  return m;
}

void SelfAttention::forward(const Tensor& x, const Tensor* mask, Tensor& y,
                            const ForwardOptions& opt) {
  check_arg(x.rank() == 3 && x.dim(2) == H_,
            "SelfAttention input: expected shape [B, L, H=" + std::to_string(H_) + "], got " +
                shape_str(x.shape()));
  const int64_t B = x.dim(0), L = x.dim(1), D = H_, dh = dh_, nh = heads_;
  if (mask) check_shape("attention_mask", mask->shape(), {B, L, L}, "[B, L, L]");
  B_ = B, L_ = L;
  if (mask)
    mask_ = *mask;
  else
    mask_.resize({0});
  q_.forward(x, q_out_);
  k_.forward(x, k_out_);
  v_.forward(x, v_out_);
  probs_.resize({B, nh, L, L});
  dprobs_.resize({B, nh, L, L});
  ctx_.resize({B, L, D});
  drop_ = opt.training && dropout_ > 0;
  drop_key_ = derive_key(seed_, kDropTag, opt.step);
  const float scale = 1.f / std::sqrt(static_cast<float>(dh));
  const float rate = static_cast<float>(dropout_), keep_scale = dropout_scale(rate);
  parallel_for(B * nh, [&](int64_t bh) {
    const int64_t b = bh / nh, h = bh % nh;
    float* p = probs_.data() + bh * L * L;
    gemm(false, true, L, L, dh, scale, q_out_.data() + b * L * D + h * dh, D,
         k_out_.data() + b * L * D + h * dh, D, 0.f, p, L);
    if (mask)
      for (int64_t i = 0; i < L * L; ++i)
        if ((*mask)[b * L * L + i] == 0.f) p[i] = kMaskedScore;
    softmax_rows(p, L, L);
    float* pd = dprobs_.data() + bh * L * L;
    for (int64_t i = 0; i < L * L; ++i)
      pd[i] =
          drop_ ? (dropout_keep(drop_key_, bh * L * L + i, rate) ? p[i] * keep_scale : 0.f) : p[i];
    gemm(false, false, L, dh, L, 1.f, pd, L, v_out_.data() + b * L * D + h * dh, D, 0.f,
         ctx_.data() + b * L * D + h * dh, D);
  });
  o_.forward(ctx_, y);
}

void SelfAttention::backward(const Tensor& dy, Tensor& dx) {
  check_arg(B_ > 0, "SelfAttention::backward: call forward first");
  const int64_t B = B_, L = L_, D = H_, dh = dh_, nh = heads_;
  check_shape("dy", dy.shape(), {B, L, D}, "[B, L, H]");
  o_.backward(dy, &dctx_);
  dq_.resize({B, L, D});
  dk_.resize({B, L, D});
  dv_.resize({B, L, D});
  dscores_.resize({B, nh, L, L});
  const float scale = 1.f / std::sqrt(static_cast<float>(dh));
  const float rate = static_cast<float>(dropout_), keep_scale = dropout_scale(rate);
  parallel_for(B * nh, [&](int64_t bh) {
    const int64_t b = bh / nh, h = bh % nh;
    const float* p = probs_.data() + bh * L * L;
    const float* pd = dprobs_.data() + bh * L * L;
    const float* dc = dctx_.data() + b * L * D + h * dh;
    // dV = Pd^T dctx; dPd = dctx V^T; dP = dPd through dropout; dS = P * (dP - rowsum(dP * P)).
    gemm(true, false, L, dh, L, 1.f, pd, L, dc, D, 0.f, dv_.data() + b * L * D + h * dh, D);
    float* ds = dscores_.data() + bh * L * L;
    gemm(false, true, L, L, dh, 1.f, dc, D, v_out_.data() + b * L * D + h * dh, D, 0.f, ds, L);
    for (int64_t i = 0; i < L; ++i) {
      float* row = ds + i * L;
      if (drop_)
        for (int64_t j = 0; j < L; ++j)
          row[j] =
              dropout_keep(drop_key_, bh * L * L + i * L + j, rate) ? row[j] * keep_scale : 0.f;
      double dot = 0;
      for (int64_t j = 0; j < L; ++j) dot += static_cast<double>(row[j]) * p[i * L + j];
      for (int64_t j = 0; j < L; ++j) row[j] = p[i * L + j] * (row[j] - static_cast<float>(dot));
      // A masked score is a constant, not a function of Q and K (this matters for a fully
      // masked row, whose uniform probabilities would otherwise pass a gradient).
      for (int64_t j = 0; mask_.numel() && j < L; ++j)
        if (mask_[b * L * L + i * L + j] == 0.f) row[j] = 0.f;
    }
    // scores = scale * Q K^T: dQ = scale * dS K, dK = scale * dS^T Q.
    gemm(false, false, L, dh, L, scale, ds, L, k_out_.data() + b * L * D + h * dh, D, 0.f,
         dq_.data() + b * L * D + h * dh, D);
    gemm(true, false, L, dh, L, scale, ds, L, q_out_.data() + b * L * D + h * dh, D, 0.f,
         dk_.data() + b * L * D + h * dh, D);
  });
  q_.backward(dq_, &dx);
  k_.backward(dk_, &tmp_);
  for (int64_t i = 0; i < dx.numel(); ++i) dx[i] += tmp_[i];
  v_.backward(dv_, &tmp_);
  for (int64_t i = 0; i < dx.numel(); ++i) dx[i] += tmp_[i];
}

}  // namespace sparsemoe
