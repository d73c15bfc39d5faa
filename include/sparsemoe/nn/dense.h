// A dense (fully connected) layer over the last axis: y = act(x . kernel + bias), kernel [in, out]
// TruncatedNormal(stddev), bias zeros. Used by the embedding projection, the pooler and the heads.
// Row tiles fixed by shape, one single-threaded GEMM each, so results do not depend on threads.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

class Dense {
 public:
  Dense(int64_t in, int64_t out, Activation activation = Activation::kLinear, bool use_bias = true,
        double init_stddev = 0.02, uint64_t seed = 0);

  // x [..., in] -> y [..., out]. save = false (ForwardOptions::save_for_backward): inference,
  // no copy of x and no pre-activation kept; backward() then throws.
  void forward(const Tensor& x, Tensor& y, bool save = true);
  // dy [..., out] -> dx [..., in] (overwritten; null skips it); accumulates kernel/bias grads.
  void backward(const Tensor& dy, Tensor* dx);

  // Hands out writable views of the weights, so it drops the packed copy (prepare_inference).
  std::vector<ParamRef> params();
  // Packs the kernel once for the GEMM kernel's current level (ops/gemm_kernel.h: PackedWeights),
  // so forward calls stop packing it per call. The copy is dropped by params() and backward(),
  // the ways weights change; a caller that writes `kernel` directly afterwards must call
  // release_inference() (or prepare_inference() again).
  void prepare_inference() { packed_.pack(1, in_, out_, kernel.data(), 0); }
  void release_inference() { packed_.clear(); }
  int64_t packed_bytes() const { return packed_.bytes(); }
  int64_t in() const { return in_; }
  int64_t out() const { return out_; }

  Tensor kernel, bias, kernel_grad, bias_grad;

 private:
  int64_t in_, out_;
  Activation act_;
  Tensor x_;  // [N, in] the last forward's input (a copy)
  Shape x_shape_;
  Tensor h_;                      // [N, out] pre-activation (unused when the activation is linear)
  Tensor dh_;                     // [N, out]
  std::vector<int64_t> offsets_;  // {0, N}: one group of rows for the tiled GEMM
  PackedWeights packed_;          // kernel packed for inference, or empty
};

}  // namespace sparsemoe
