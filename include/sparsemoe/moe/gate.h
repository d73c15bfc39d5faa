// The gate stage shared by the MoE layer and lingvo's gating layers: the router's weights and
// logits = x~ . kernel + bias, where x~ = x, or x times U(1-eps, 1+eps) noise drawn from the
// counter RNG when jittered (regenerated in backward, not stored).
#pragma once

#include <cstdint>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

struct GateWeights {
  GateWeights(int64_t H, int64_t E, bool use_bias, double init_stddev, uint64_t key);
  Tensor kernel, bias;            // [H, E], [E] (empty without bias)
  Tensor kernel_grad, bias_grad;  // same shapes, accumulated by backward
};

struct GateNoise {
  bool jittered = false;
  uint64_t key = 0;
  float eps = 0.f;
  int64_t offset = 0;  // flat [N, H] index of this call's first element in the global batch
};

// x [N, H] -> gate_in [N, H] (x~, saved for backward), logits [N, E]. Without `save` (inference)
// and without jitter, gate_in is left alone and the logits are computed from x itself.
void gate_forward(const GateWeights& w, const float* x, int64_t N, int64_t H,
                  const GateNoise& noise, Tensor& gate_in, Tensor& logits, bool save = true);
// dlogits [N, E] -> kernel/bias gradients (+=); dx [N, H] += (dlogits . kernel^T) * noise.
// workspace: [N, H] scratch.
void gate_backward(GateWeights& w, const Tensor& gate_in, const float* dlogits,
                   const GateNoise& noise, Tensor& workspace, float* dx);

}  // namespace sparsemoe
