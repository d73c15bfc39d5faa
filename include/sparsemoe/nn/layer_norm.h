// LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * gamma + beta, with the biased
// variance as Keras computes it (epsilon 1e-12 in the Sparse Mixer). Forward saves the mean and
// 1/std per row for backward.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

class LayerNorm {
 public:
  explicit LayerNorm(int64_t hidden, double epsilon = 1e-12);

  // x [..., H] -> y (same shape).
  void forward(const Tensor& x, Tensor& y);
  // dy -> dx (overwritten); accumulates gamma/beta gradients.
  void backward(const Tensor& dy, Tensor& dx);

  std::vector<ParamRef> params() {
    return {{"gamma", &gamma, &gamma_grad}, {"beta", &beta, &beta_grad}};
  }

  Tensor gamma, beta, gamma_grad, beta_grad;  // [H]; gamma starts at 1, beta at 0

 private:
  int64_t H_;
  double eps_;
  Tensor xhat_;              // [N, H] normalised input
  std::vector<float> rstd_;  // [N]
};

}  // namespace sparsemoe
