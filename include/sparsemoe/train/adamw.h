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

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/dist/communicator.h"
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

  template <class V>
  void fields(V& v) {
    v("learning_rate", learning_rate, "peak learning rate", at_least(0));
    v("beta1", beta1, "Adam beta1", in_half_open(0, 1));
    v("beta2", beta2, "Adam beta2", in_half_open(0, 1));
    v("epsilon", epsilon, "Adam epsilon", above(0));
    v("weight_decay", weight_decay, "decoupled weight decay", at_least(0));
    v("warmup_steps", warmup_steps, "linear warm-up steps", at_least(0));
    v("total_steps", total_steps, "linear decay to 0 at this step (0: the phase's steps)",
      at_least(0));
    v("clip_norm", clip_norm, "global gradient norm limit (0: no clipping)", at_least(0));
    v("no_decay", no_decay, "parameters whose name contains one of these get no weight decay");
  }
  nlohmann::json to_json() const { return config_to_json(*this); }
  static AdamWConfig from_json(const nlohmann::json& j);  // strict keys
  void validate() const;
};

// The schedule: lr * step / warmup during the warm-up (step counted from 1), then linear decay
// to 0 at total_steps.
double learning_rate_at(const AdamWConfig& c, int64_t step);

// sqrt(sum of squares) of every gradient, accumulated in double over fixed chunks (a stacked
// expert parameter's chunks restart at each expert), the chunks' sums added in parameter, expert
// and chunk order. With expert-sharded parameters (ParamRef::sharded) and `comm`, collective: each
// rank sums the chunks of the experts it holds and the chunk sums are shared (exactly: each has
// one non-zero contributor) before they are added, so the norm has one process's bits.
double global_grad_norm(const std::vector<ParamRef>& params, Communicator* comm = nullptr);

// Expert-sharded parameters (ParamRef::sharded) in the whole layout, for checkpoints.
// gather_experts: `local` holds p's experts on this rank; `root` gets the whole [E, ...] tensor
// (collective: each rank's block in turn; the other ranks get an empty tensor).
Tensor gather_experts(const ParamRef& p, const Tensor& local, Communicator& comm, int root);
// take_experts: the rows of `whole` ([E, ...]) that p holds.
Tensor take_experts(const ParamRef& p, const Tensor& whole);

// With a communicator of P > 1 processes the optimizer state is sharded (ZeRO-1): the parameters
// are dealt out in order, each to one rank, in P runs of about equal size; a rank keeps the
// moments of its own parameters only and updates only them, then every parameter is broadcast
// from its owner. Every rank must hold the same gradients (summed over the ranks): the norm is
// then computed alike everywhere and every element is updated as in one process, so the weights
// have one process's bits. Expert-sharded parameters (ParamRef::sharded) are not dealt: every
// rank keeps the moments of the experts it holds and updates them with its own gradients (the
// owner's are already the sum over the step; nothing to broadcast); their norm is shared.
class AdamW {
 public:
  AdamW(const AdamWConfig& config, const std::vector<ParamRef>& params,
        Communicator* comm = nullptr);

  // One update from the gradients in params (clipped first when clip_norm > 0). Returns the
  // gradient norm before clipping. The params must be the same list, in the same order, as at
  // construction. Collective when sharded.
  double step(const std::vector<ParamRef>& params);

  int64_t steps_done() const { return step_; }
  const AdamWConfig& config() const { return config_; }
  // The moments as named tensors ("m/<param>", "v/<param>") and the step, for checkpoints (not
  // sharded: sharded() throws).
  std::vector<std::pair<std::string, const Tensor*>> state() const;
  // The same when sharded, collective: rank `root` gets copies of every parameter's moments (the
  // others an empty list), one parameter's in flight at a time.
  std::vector<std::pair<std::string, Tensor>> gather_state(int root) const;
  // Restores what state() saved (each rank keeps its own parameters'); throws IoError naming a
  // missing or mis-shaped moment.
  void load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step);
  // The rank that keeps parameter k's moments and updates it (0 when not sharded; kEveryRank for
  // an expert-sharded parameter: each rank its own experts').
  static constexpr int kEveryRank = -1;
  int owner(size_t k) const { return owner_[k]; }
  // Bytes of moments this rank keeps.
  int64_t state_bytes() const;
  bool sharded() const { return comm_ && comm_->size() > 1; }

 private:
  AdamWConfig config_;
  Communicator* comm_ = nullptr;
  std::vector<std::string> names_;
  std::vector<Shape> shapes_;   // whole shapes (an expert-sharded parameter's with all E)
  std::vector<ParamRef> refs_;  // at construction, for the layout of sharded parameters
  std::vector<int> owner_;
  std::vector<Tensor> m_, v_;  // empty for parameters another rank owns
  std::vector<bool> decay_;
  int64_t step_ = 0;
};

}  // namespace sparsemoe
