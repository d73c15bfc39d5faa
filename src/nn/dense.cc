// Dense layer forward/backward (see dense.h).
#include "sparsemoe/nn/dense.h"

#include <algorithm>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"

namespace sparsemoe {

namespace {
constexpr int64_t kRows = 128;  // row tile
}

Dense::Dense(int64_t in, int64_t out, Activation activation, bool use_bias, double init_stddev,
             uint64_t seed)
    : kernel({in, out}),
      bias({use_bias ? out : 0}),
      kernel_grad({in, out}),
      bias_grad({use_bias ? out : 0}),
      in_(in),
      out_(out),
      act_(activation) {
  check_arg(in >= 1 && out >= 1,
            "Dense: expected in, out >= 1, got " + std::to_string(in) + ", " + std::to_string(out));
  fill_truncated_normal(kernel, init_stddev, derive_key(seed, 0x44454e53));
}

std::vector<ParamRef> Dense::params() {
  std::vector<ParamRef> p = {{"kernel", &kernel, &kernel_grad}};
  if (bias.numel()) p.push_back({"bias", &bias, &bias_grad});
  return p;
}

void Dense::forward(const Tensor& x, Tensor& y) {
  check_arg(x.rank() >= 1 && x.dim(-1) == in_, "Dense input: expected shape [..., " +
                                                   std::to_string(in_) + "], got " +
                                                   shape_str(x.shape()));
  const int64_t N = x.numel() / in_;
  x_.resize({N, in_});  // backward's dW = x^T dh: a copy, not a pointer into the caller's x
  std::copy_n(x.data(), x.numel(), x_.data());
  x_shape_ = x.shape();
  Shape ys = x.shape();
  ys.back() = out_;
  y.resize(ys);
  h_.resize({N, out_});
  parallel_for((N + kRows - 1) / kRows, [&](int64_t t) {
    const int64_t r0 = t * kRows, rows = std::min(kRows, N - r0);
    float* h = h_.data() + r0 * out_;
    gemm(false, false, rows, out_, in_, 1.f, x.data() + r0 * in_, in_, kernel.data(), out_, 0.f, h,
         out_);
    for (int64_t r = 0; r < rows; ++r) {
      float* hr = h + r * out_;
      for (int64_t j = 0; bias.numel() && j < out_; ++j) hr[j] += bias[j];
      activation_forward(act_, hr, y.data() + (r0 + r) * out_, out_);
    }
  });
}

void Dense::backward(const Tensor& dy, Tensor* dx) {
  check_arg(!x_shape_.empty(), "Dense::backward: call forward first");
  const int64_t N = h_.dim(0);
  check_arg(dy.numel() == N * out_, "Dense dy: expected " + std::to_string(N) + " rows of " +
                                        std::to_string(out_) + ", got " + shape_str(dy.shape()));
  dh_.resize({N, out_});
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      activation_backward(act_, h_.data() + r * out_, dy.data() + r * out_, dh_.data() + r * out_,
                          out_);
  });
  // kernel_grad += x^T dh (parallel over fixed row tiles of the kernel; each sums all N rows).
  parallel_for((in_ + kRows - 1) / kRows, [&](int64_t t) {
    const int64_t k0 = t * kRows, rows = std::min(kRows, in_ - k0);
    gemm(true, false, rows, out_, N, 1.f, x_.data() + k0, in_, dh_.data(), out_, 1.f,
         kernel_grad.data() + k0 * out_, out_);
  });
  if (bias.numel())
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < out_; ++j) bias_grad[j] += dh_[r * out_ + j];
  if (!dx) return;
  dx->resize(x_shape_);
  parallel_for((N + kRows - 1) / kRows, [&](int64_t t) {
    const int64_t r0 = t * kRows, rows = std::min(kRows, N - r0);
    gemm(false, true, rows, in_, out_, 1.f, dh_.data() + r0 * out_, out_, kernel.data(), out_, 0.f,
         dx->data() + r0 * in_, in_);
  });
}

}  // namespace sparsemoe
