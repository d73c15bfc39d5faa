// LayerNorm: shape checks and saved rows around the ops/layer_norm.h kernel.
#include "sparsemoe/nn/layer_norm.h"

#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/ops/layer_norm.h"

namespace sparsemoe {

LayerNorm::LayerNorm(int64_t hidden, double epsilon)
    : gamma({hidden}, 1.f),
      beta({hidden}),
      gamma_grad({hidden}),
      beta_grad({hidden}),
      H_(hidden),
      eps_(epsilon) {
  check_arg(hidden >= 1, "LayerNorm: hidden size must be >= 1, got " + std::to_string(hidden));
  check_arg(epsilon >= 0, "LayerNorm: epsilon must be >= 0");
}

void LayerNorm::forward(const Tensor& x, Tensor& y) {
  check_arg(x.rank() >= 1 && x.dim(-1) == H_,
            "LayerNorm input: expected shape [..., H=" + std::to_string(H_) + "], got " +
                shape_str(x.shape()));
  const int64_t N = x.numel() / H_;
  y.resize(x.shape());
  xhat_.resize({N, H_});
  rstd_.resize(N);
  layer_norm_forward(x.data(), N, H_, gamma.data(), beta.data(), eps_, y.data(), xhat_.data(),
                     rstd_.data());
}

void LayerNorm::backward(const Tensor& dy, Tensor& dx) {
  const int64_t H = H_, N = static_cast<int64_t>(rstd_.size());
  check_arg(
      dy.numel() == N * H,
      "LayerNorm dy: expected the shape of the last forward input, got " + shape_str(dy.shape()));
  dx.resize(dy.shape());
  layer_norm_backward(dy.data(), xhat_.data(), rstd_.data(), gamma.data(), N, H, dx.data(),
                      gamma_grad.data(), beta_grad.data());
}

}  // namespace sparsemoe
