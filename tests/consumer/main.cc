// Builds a small MoE layer through the installed headers and runs one forward pass; exits
// non-zero if the output is not finite or has the wrong shape.
#include <cmath>
#include <cstdio>

#include "sparsemoe/layers/moe_layer.h"

int main() {
  sparsemoe::MoeLayerConfig cfg;
  cfg.hidden_size = 8;
  cfg.experts.num_experts = 4;
  cfg.experts.d_ff = 16;
  cfg.router.num_experts = 4;
  sparsemoe::MoeLayer layer(cfg);
  sparsemoe::Tensor x({2, 3, 8});
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = 0.01f * static_cast<float>(i % 7);
  sparsemoe::Tensor y;
  const auto metrics = layer.forward(x, y, {});
  if (y.shape() != x.shape()) return 1;
  for (int64_t i = 0; i < y.numel(); ++i)
    if (!std::isfinite(y.data()[i])) return 1;
  std::printf("consumer: forward ok, load_balancing_loss %g\n", metrics.load_balancing_loss);
  return 0;
}
