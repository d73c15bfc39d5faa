// Multi-head self-attention forward/backward (see attention.h).
#include "sparsemoe/nn/attention.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/gemm_kernel.h"
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

int64_t SelfAttention::prepare_inference() {
  int64_t bytes = 0;
  for (Dense* d : {&q_, &k_, &v_, &o_}) {
    d->prepare_inference();
    bytes += d->packed_bytes();
  }
  return bytes;
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

namespace {

// Query rows per score block: the block [rows, L] stays in L2 (forward one block of 256 KiB; the
// backward three blocks of 128 KiB each: P, dropped P, and dP).
int64_t query_block(int64_t L, int64_t floats) {
  return std::max<int64_t>(1, std::min(L, std::max<int64_t>(8, floats / std::max<int64_t>(L, 1))));
}
constexpr int64_t kForwardFloats = 64 * 1024, kBackwardFloats = 32 * 1024;

// A per-thread scratch buffer, grown on demand.
float* scratch(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

}  // namespace

// The probabilities of query rows [i0, i0 + rows) of head bh: p [rows, L] = softmax(scale * Q
// K^T), masked keys at kMaskedScore. The forward and the backward both call it, so the backward's
// recomputed P is bitwise the forward's.
void SelfAttention::scores(int64_t bh, int64_t i0, int64_t rows, float* p) const {
  const int64_t L = L_, D = H_, dh = dh_, b = bh / heads_, h = bh % heads_;
  kernel_gemm(rows, L, dh, MatRef::rows(q_out_.data() + (b * L + i0) * D + h * dh, D),
              MatRef::transposed(k_out_.data() + b * L * D + h * dh, D), p, L, false);
  const float* m = mask_.numel() ? mask_.data() + (b * L + i0) * L : nullptr;
  softmax_rows_scaled(p, rows, L, L, 1.f / std::sqrt(static_cast<float>(dh)), m, L, kMaskedScore);
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
  q_.forward(x, q_out_, opt.save_for_backward);
  k_.forward(x, k_out_, opt.save_for_backward);
  v_.forward(x, v_out_, opt.save_for_backward);
  ctx_.resize({B, L, D});
  drop_ = opt.training && dropout_ > 0;
  drop_key_ = derive_key(seed_, kDropTag, opt.step);
  drop_heads_ = opt.token_offset / L * nh;
  const float rate = static_cast<float>(dropout_);
  // Flash-attention style: each task takes a block of query rows of one head; its scores live in
  // a cache-sized buffer from QK^T through the softmax and dropout to PV, and [B, heads, L, L]
  // is never stored. The backward recomputes the blocks it needs.
  const int64_t rq = query_block(L, kForwardFloats), nq = (L + rq - 1) / rq;
  parallel_for(B * nh * nq, [&](int64_t t) {
    thread_local std::vector<float> buf;
    const int64_t bh = t / nq, b = bh / nh, h = bh % nh, i0 = t % nq * rq;
    const int64_t rows = std::min(rq, L - i0);
    float* p = scratch(buf, rows * L);  // [rows, L]
    scores(bh, i0, rows, p);
    if (drop_)
      dropout_span(drop_key_, static_cast<uint64_t>(((drop_heads_ + bh) * L + i0) * L), rate, p, p,
                   rows * L);
    kernel_gemm(rows, dh, L, MatRef::rows(p, L),
                MatRef::rows(v_out_.data() + b * L * D + h * dh, D),
                ctx_.data() + (b * L + i0) * D + h * dh, D, false);
  });
  o_.forward(ctx_, y, opt.save_for_backward);
}

void SelfAttention::backward(const Tensor& dy, Tensor& dx) {
  check_arg(B_ > 0, "SelfAttention::backward: call forward first");
  const int64_t B = B_, L = L_, D = H_, dh = dh_, nh = heads_;
  check_shape("dy", dy.shape(), {B, L, D}, "[B, L, H]");
  o_.backward(dy, &dctx_);
  dq_.resize({B, L, D});
  dk_.resize({B, L, D});
  dv_.resize({B, L, D});
  const float scale = 1.f / std::sqrt(static_cast<float>(dh));
  const float rate = static_cast<float>(dropout_);
  const int64_t rq = query_block(L, kBackwardFloats);
  // One task per head: its query blocks run in order, so dK and dV, which sum over all query
  // rows, are each one FMA chain over the rows 0..L-1 whatever the block size.
  parallel_for(B * nh, [&](int64_t bh) {
    thread_local std::vector<float> buf;
    const int64_t b = bh / nh, h = bh % nh, off = b * L * D + h * dh;
    float* p = scratch(buf, 3 * rq * L);  // P [rq, L]
    float* pd = p + rq * L;               // P after dropout [rq, L] (what multiplied V)
    float* ds = pd + rq * L;              // dPd, then dScores [rq, L]
    for (int64_t i0 = 0; i0 < L; i0 += rq) {
      const int64_t rows = std::min(rq, L - i0), roff = off + i0 * D;
      scores(bh, i0, rows, p);
      const float* used = p;
      if (drop_) {
        dropout_span(drop_key_, static_cast<uint64_t>(((drop_heads_ + bh) * L + i0) * L), rate, p,
                     pd, rows * L);
        used = pd;
      }
      // dV += Pd^T dctx; dPd = dctx V^T.
      kernel_gemm(L, dh, rows, MatRef::transposed(used, L), MatRef::rows(dctx_.data() + roff, D),
                  dv_.data() + off, D, i0 > 0);
      kernel_gemm(rows, L, dh, MatRef::rows(dctx_.data() + roff, D),
                  MatRef::transposed(v_out_.data() + off, D), ds, L, false);
      // dS = P * (dP - rowsum(dP * P)) for dP = dPd through the dropout, times the score scale;
      // a masked score is a constant, not a function of Q and K (this matters for a fully masked
      // row, whose uniform probabilities would otherwise pass a gradient).
      for (int64_t i = 0; i < rows; ++i)
        softmax_backward_row(p + i * L, used + i * L, ds + i * L, L, scale,
                             mask_.numel() ? mask_.data() + (b * L + i0 + i) * L : nullptr);
      // scores = scale * Q K^T: dQ = dS' K and dK += dS'^T Q, dS' holding the scale.
      kernel_gemm(rows, dh, L, MatRef::rows(ds, L), MatRef::rows(k_out_.data() + off, D),
                  dq_.data() + roff, D, false);
      kernel_gemm(L, dh, rows, MatRef::transposed(ds, L), MatRef::rows(q_out_.data() + roff, D),
                  dk_.data() + off, D, i0 > 0);
    }
  });
  q_.backward(dq_, &dx);
  k_.backward(dk_, &tmp_);
  for (int64_t i = 0; i < dx.numel(); ++i) dx[i] += tmp_[i];
  v_.backward(dv_, &tmp_);
  for (int64_t i = 0; i < dx.numel(); ++i) dx[i] += tmp_[i];
}

}  // namespace sparsemoe
