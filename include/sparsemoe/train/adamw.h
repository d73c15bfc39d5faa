// AdamW (decoupled weight decay, Loshchilov & Hutter; PyTorch's update order and bias
// correction), the learning-rate schedule (linear warm-up, then linear decay to 0 at total_steps)
// and gradient clipping by global norm. Parameters whose name contains one of `no_decay` (layer
// norms and biases, the BERT convention) get no weight decay. Everything is elementwise or a
// reduction over fixed chunks, so results are bitwise identical at any thread count.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

struct AdamWConfig {
  double learning_rate = 1e-4;  // peak
  double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-6;
  double weight_decay = 0.01;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // 0: no decay after the warm-up
  double clip_norm = 1.0;   // global gradient norm limit; 0: no clipping
  std::vector<std::string> no_decay = {"layer_norm", "bias"};

  nlohmann::json to_json() const;
  static AdamWConfig from_json(const nlohmann::json& j);  // strict keys
  void validate() const;
};

// The schedule: lr * step / warmup during the warm-up (step counted from 1), then linear decay
// to 0 at total_steps.
double learning_rate_at(const AdamWConfig& c, int64_t step);

// sqrt(sum of squares) of every gradient, accumulated in double over fixed chunks.
double global_grad_norm(const std::vector<ParamRef>& params);

class AdamW {
 public:
  AdamW(const AdamWConfig& config, const std::vector<ParamRef>& params);

  // One update from the gradients in params (clipped first when clip_norm > 0). Returns the
  // gradient norm before clipping. The params must be the same list, in the same order, as at
  // construction.
  double step(const std::vector<ParamRef>& params);

  int64_t steps_done() const { return step_; }
  const AdamWConfig& config() const { return config_; }
  // The moments as named tensors ("m/<param>", "v/<param>") and the step, for checkpoints.
  std::vector<std::pair<std::string, const Tensor*>> state() const;
  // Restores what state() saved; throws IoError naming a missing or mis-shaped moment.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step);

 private:
  AdamWConfig config_;
  std::vector<std::string> names_;
  std::vector<Tensor> m_, v_;
  std::vector<bool> decay_;
  int64_t step_ = 0;
};

}  // namespace sparsemoe
