// Dense layer forward/backward (see dense.h).
#include "sparsemoe/nn/dense.h"

#include <algorithm>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/ops/tiled_gemm.h"

namespace sparsemoe {

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
  packed_.clear();
  std::vector<ParamRef> p = {{"kernel", &kernel, &kernel_grad}};
  if (bias.numel()) p.push_back({"bias", &bias, &bias_grad});
  return p;
}

void Dense::forward(const Tensor& x, Tensor& y, bool save) {
  check_arg(x.rank() >= 1 && x.dim(-1) == in_, "Dense input: expected shape [..., " +
                                                   std::to_string(in_) + "], got " +
                                                   shape_str(x.shape()));
  const int64_t N = x.numel() / in_;
  x_shape_.clear();  // until the forward is complete and saved
  if (save) {
    x_.resize({N, in_});  // backward's dW = x^T dh: a copy, not a pointer into the caller's x
    std::copy_n(x.data(), x.numel(), x_.data());
  }
  Shape ys = x.shape();
  ys.back() = out_;
  y.resize(ys);
  // The GEMM writes the pre-activation where it is kept: h_ when a backward needs it (a nonlinear
  // activation), else y itself, and the activation runs in place.
  const bool keep_h = save && act_ != Activation::kLinear;
  if (keep_h) h_.resize({N, out_});
  float* h = keep_h ? h_.data() : y.data();
  offsets_ = {0, N};
  // h = x . W on the GEMM kernel; bias and activation in its write-out, per finished block.
  for_tiles(
      row_tiles(offsets_.data(), 1), out_, !packed_.empty(),
      [&](const RowTile& t, int64_t c0, int64_t c1) {
        const GemmEpilogue epilogue = [&](int64_t r0, int64_t rows, int64_t j0, int64_t cols) {
          for (int64_t r = t.begin + r0; r < t.begin + r0 + rows; ++r) {
            float* hr = h + r * out_ + c0 + j0;
            for (int64_t j = 0; bias.numel() && j < cols; ++j) hr[j] += bias[c0 + j0 + j];
            if (keep_h)
              activation_forward(act_, hr, y.data() + r * out_ + c0 + j0, cols);
            else
              activation_in_place(act_, hr, cols);
          }
        };
        kernel_gemm(t.end - t.begin, c1 - c0, in_, MatRef::rows(x.data() + t.begin * in_, in_),
                    MatRef::rows(kernel.data() + c0, out_), h + t.begin * out_ + c0, out_, false,
                    &epilogue, packed_.panels(0, c0, in_));
      });
  if (save) x_shape_ = x.shape();
}

void Dense::backward(const Tensor& dy, Tensor* dx) {
  check_arg(!x_shape_.empty(),
            "Dense::backward: call forward first (with ForwardOptions::save_for_backward)");
  packed_.clear();  // an optimizer step follows: the packed copy would go stale
  const int64_t N = x_.dim(0);
  check_arg(dy.numel() == N * out_, "Dense dy: expected " + std::to_string(N) + " rows of " +
                                        std::to_string(out_) + ", got " + shape_str(dy.shape()));
  // dh = act'(h) * dy; a linear activation's dh is dy itself.
  const float* dh = dy.data();
  if (act_ != Activation::kLinear) {
    dh_.resize({N, out_});
    parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        activation_backward(act_, h_.data() + r * out_, dy.data() + r * out_, dh_.data() + r * out_,
                            out_);
    });
    dh = dh_.data();
  }
  // kernel_grad += x^T dh, bias_grad += column sums of dh, dx = dh . W^T.
  add_weight_grad(offsets_.data(), 1, x_.data(), in_, dh, out_, kernel_grad.data());
  if (bias.numel()) add_bias_grad(offsets_.data(), 1, dh, out_, bias_grad.data());
  if (!dx) return;
  dx->resize(x_shape_);
  input_grad(offsets_.data(), 1, dh, out_, kernel.data(), in_, dx->data());
}

}  // namespace sparsemoe
