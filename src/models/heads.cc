// Masked-LM and classification heads and the softmax cross-entropy (see heads.h).
#include "sparsemoe/models/heads.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/kernels.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

namespace {

constexpr uint64_t kTransformTag = 1, kDropoutTag = 2, kDenseTag = 3;

}  // namespace

double softmax_cross_entropy(const Tensor& logits, const std::vector<int64_t>& labels,
                             const float* weights, Tensor* dlogits, double* correct,
                             double weight_total) {
  check_arg(logits.rank() >= 1, "logits: expected shape [N, C]");
  const int64_t C = logits.dim(-1), N = C ? logits.numel() / C : 0;
  check_arg(static_cast<int64_t>(labels.size()) == N, "labels: expected " + std::to_string(N) +
                                                          " labels (one per logits row), got " +
                                                          std::to_string(labels.size()));
  double wsum = 0, loss = 0, hits = 0;
  for (int64_t i = 0; i < N; ++i) {
    check_arg(labels[i] >= 0 && labels[i] < C,
              "labels: expected values in [0, " + std::to_string(C) + "), got " +
                  std::to_string(labels[i]) + " at row " + std::to_string(i));
    wsum += weights ? weights[i] : 1.0;
  }
  if (weight_total >= 0) wsum = weight_total;
  if (dlogits) dlogits->resize(logits.shape());
  const double inv = wsum > 0 ? 1.0 / wsum : 0.0;
  // Rows in parallel, their losses summed afterwards in row order (any thread count, same bits).
  std::vector<double> row_loss(static_cast<size_t>(N)), row_hit(static_cast<size_t>(N));
  parallel_for_range(N, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* z = logits.data() + i * C;
      const double w = weights ? weights[i] : 1.0;
      const float s = static_cast<float>(w * inv);
      float* d = dlogits ? dlogits->data() + i * C : nullptr;
      const float lse = logsumexp_and_softmax(z, C, s, d);
      if (d) d[labels[i]] -= s;
      row_loss[static_cast<size_t>(i)] = w * (lse - z[labels[i]]);
      row_hit[static_cast<size_t>(i)] = w * (std::max_element(z, z + C) - z == labels[i]);
    }
  });
  for (int64_t i = 0; i < N; ++i) {
    loss += row_loss[static_cast<size_t>(i)];
    hits += row_hit[static_cast<size_t>(i)];
  }
  if (correct) *correct += hits;
  return loss * inv;
}

MaskedLmHead::MaskedLmHead(int64_t hidden, int64_t width, int64_t vocab, Activation activation,
                           double init_stddev, uint64_t seed)
    : output_bias({vocab}),
      output_bias_grad({vocab}),
      H_(hidden),
      W_(width),
      V_(vocab),
      transform_(hidden, width, activation, true, init_stddev, derive_key(seed, kTransformTag)),
      norm_(width, 1e-12) {}

std::vector<ParamRef> MaskedLmHead::params() {
  auto p = prefixed("cls/predictions/transform/dense", transform_.params());
  for (auto& r : prefixed("cls/predictions/transform/layer_norm", norm_.params())) p.push_back(r);
  p.push_back({"cls/predictions/output_bias", &output_bias, &output_bias_grad});
  return p;
}

void MaskedLmHead::forward(const Tensor& seq, const Tensor& positions, const Tensor& table,
                           Tensor& logits) {
  check_arg(seq.rank() == 3 && seq.dim(2) == H_,
            "sequence_output: expected shape [B, L, H=" + std::to_string(H_) + "], got " +
                shape_str(seq.shape()));
  const int64_t B = seq.dim(0), L = seq.dim(1);
  check_arg(positions.rank() == 2 && positions.dim(0) == B,
            "masked_lm_positions: expected shape [B=" + std::to_string(B) + ", P], got " +
                shape_str(positions.shape()));
  check_shape("embedding table", table.shape(), {V_, W_}, "[V, W]");
  const int64_t P = positions.dim(1), N = B * P;
  const std::vector<int64_t> pos = read_ids(positions, L, "masked_lm_positions");
  seq_shape_ = seq.shape();
  rows_.resize(N);
  gathered_.resize({B, P, H_});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < P; ++p) {
      rows_[b * P + p] = b * L + pos[b * P + p];
      std::copy_n(seq.data() + rows_[b * P + p] * H_, H_, gathered_.data() + (b * P + p) * H_);
    }
  transform_.forward(gathered_, t_);
  norm_.forward(t_, n_);
  logits.resize({B, P, V_});
  // logits = n . table^T + bias, the bias added in the GEMM's write-out.
  offsets_ = {0, N};
  for_tiles(row_tiles(offsets_.data(), 1), V_, [&](const RowTile& t, int64_t c0, int64_t c1) {
    float* out = logits.data() + t.begin * V_ + c0;
    const GemmEpilogue epilogue = [&](int64_t r0, int64_t rows, int64_t j0, int64_t cols) {
      for (int64_t r = r0; r < r0 + rows; ++r)
        for (int64_t v = j0; v < j0 + cols; ++v) out[r * V_ + v] += output_bias[c0 + v];
    };
    kernel_gemm(t.end - t.begin, c1 - c0, W_, MatRef::rows(n_.data() + t.begin * W_, W_),
                MatRef::transposed(table.data() + c0 * W_, W_), out, V_, false, &epilogue);
  });
}

void MaskedLmHead::backward(const Tensor& dlogits, const Tensor& table, Tensor& dseq,
                            Tensor& dtable) {
  check_arg(!seq_shape_.empty(), "MaskedLmHead::backward: call forward first");
  check_shape("embedding table", table.shape(), {V_, W_}, "[V, W]");
  const int64_t N = static_cast<int64_t>(rows_.size());
  check_shape("dlogits", dlogits.shape(), {gathered_.dim(0), gathered_.dim(1), V_}, "[B, P, V]");
  check_shape("dtable", dtable.shape(), {V_, W_}, "[V, W]");
  check_shape("dsequence", dseq.shape(), seq_shape_, "[B, L, H] like the sequence output");
  for (int64_t i = 0; i < N; ++i)
    for (int64_t v = 0; v < V_; ++v) output_bias_grad[v] += dlogits[i * V_ + v];
  // dtable += dlogits^T . n (tiles over vocabulary rows); dn = dlogits . table.
  add_weight_grad(offsets_.data(), 1, dlogits.data(), V_, n_.data(), W_, dtable.data());
  dn_.resize(n_.shape());
  for_tiles(row_tiles(offsets_.data(), 1), W_, [&](const RowTile& t, int64_t c0, int64_t c1) {
    kernel_gemm(t.end - t.begin, c1 - c0, V_, MatRef::rows(dlogits.data() + t.begin * V_, V_),
                MatRef::rows(table.data() + c0, W_), dn_.data() + t.begin * W_ + c0, W_, false);
  });
  norm_.backward(dn_, dt_);
  transform_.backward(dt_, &dg_);
  // Scatter-add in position order (a position listed twice gets both contributions).
  for (int64_t i = 0; i < N; ++i)
    for (int64_t h = 0; h < H_; ++h) dseq[rows_[i] * H_ + h] += dg_[i * H_ + h];
}

ClassificationHead::ClassificationHead(int64_t hidden, int64_t num_classes, double dropout,
                                       double init_stddev, uint64_t seed)
    : dropout_(dropout),
      seed_(seed),
      dense_(hidden, num_classes, Activation::kLinear, true, init_stddev,
             derive_key(seed, kDenseTag)) {
  check_arg(dropout >= 0 && dropout < 1,
            "ClassificationHead dropout: expected in [0, 1), got " + std::to_string(dropout));
}

void ClassificationHead::forward(const Tensor& pooled, Tensor& logits, const ForwardOptions& opt) {
  check_arg(pooled.rank() == 2 && pooled.dim(1) == dense_.in(),
            "pooled_output: expected shape [B, H=" + std::to_string(dense_.in()) + "], got " +
                shape_str(pooled.shape()));
  drop_ = opt.training && dropout_ > 0;
  drop_key_ = derive_key(seed_, kDropoutTag, opt.step);
  drop_offset_ = static_cast<uint64_t>(opt.sequence_offset * pooled.dim(1));
  if (!drop_) return dense_.forward(pooled, logits, opt.save_for_backward);
  const float rate = static_cast<float>(dropout_);
  dropped_.resize(pooled.shape());
  dropout_span(drop_key_, drop_offset_, rate, pooled.data(), dropped_.data(), pooled.numel());
  dense_.forward(dropped_, logits, opt.save_for_backward);
}

void ClassificationHead::backward(const Tensor& dlogits, Tensor& dpooled) {
  dense_.backward(dlogits, &dpooled);
  if (!drop_) return;
  const float rate = static_cast<float>(dropout_);
  dropout_span(drop_key_, drop_offset_, rate, dpooled.data(), dpooled.data(), dpooled.numel());
}

}  // namespace sparsemoe
