// What every layer shares: the forward options (training flag, step for the counter RNG), named
// parameters with their gradients, and the Keras-like weight access built on them
// (count_params, get/set by name with shape checks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

// What a backward does with the parameter gradients. kAccumulate adds this call's gradients to the
// gradient buffers (zero them before the step, or sum several micro-batches). kOverwrite replaces
// the buffers' contents with this call's gradients, whatever they held: no zeroing pass is needed,
// and the large weight gradients are written without reading the old values, which is most of the
// backward's memory traffic when an expert gets few tokens (PyTorch's zero_grad(set_to_none=True)
// before a backward). Same bits as zeroing and accumulating. MoeLayer, MoeLayerWithBackbone and
// FeedForward take it.
enum class GradMode { kAccumulate, kOverwrite };

struct ForwardOptions {
  bool training = false;  // selects jitter, dropout and the train capacity factor
  uint64_t step = 0;      // folded into RNG keys: a new step draws new dropout/jitter noise
  const Tensor* paddings = nullptr;  // [B, L] of 0/1 (1 = padding), for layers that use them
  // Many processes: this call's tokens are tokens [token_offset, token_offset + N) of a global
  // batch of global_tokens (0: just this call's N), split over the processes by whole routing
  // groups. Random streams are keyed by global token and losses normalised by the global batch,
  // so a token draws the same noise and gets the same gradient whatever the process count.
  // sequence_offset is the same place counted in sequences (token_offset / L), for layers whose
  // rows are sequences (the classification head's dropout).
  int64_t token_offset = 0;
  int64_t global_tokens = 0;
  int64_t sequence_offset = 0;
  // The step's data-parallel units: equal runs of consecutive tokens, each run as a call of its
  // own (train/data_parallel.h sums the units' gradients as a fixed tree). Only an expert-parallel
  // MoeLayer reads it: its calls are one unit each, and it keeps each unit's expert gradients
  // apart until the step's last unit is in.
  int64_t units = 1;
  // Inference with every process holding the same tokens (evaluation during a many-process
  // training): an expert-parallel MoeLayer runs each expert on its owner and shares the outputs,
  // and the call is the whole batch (units and offsets as for one process). No backward follows.
  bool replicated = false;
  // false: an inference call, like PyTorch's no_grad. Layers keep only what the forward itself
  // needs: the dense layers and FFNs skip the copies of their inputs and the pre-activations a
  // backward reads, and a backward after such a forward throws. Outputs are the same bits.
  bool save_for_backward = true;
};

struct ParamRef {
  std::string name;  // e.g. "experts/intermediate/kernel"
  Tensor* value;
  Tensor* grad;
  // Stacked expert weights ([E, ...], dim 0 the expert): experts = E of the whole parameter (0 for
  // any other). Under expert-sharded storage (MoeLayer::set_communicator) a process holds experts
  // [expert0, expert0 + value->dim(0)) only, the others live on other processes, and `sharded`
  // is set on every process alike (even where a process happens to hold all, or none).
  int64_t experts = 0, expert0 = 0;
  bool sharded = false;
  // The whole parameter's shape (value's, with dim 0 = experts when sharded).
  Shape full_shape() const {
    Shape s = value->shape();
    if (sharded) s[0] = experts;
    return s;
  }
};

// Prefixes every name with "prefix/".
std::vector<ParamRef> prefixed(const std::string& prefix, std::vector<ParamRef> params);
int64_t count_params(const std::vector<ParamRef>& params);
// Throws InvalidArgument naming the weight when absent; the error lists the known names.
Tensor& find_weight(const std::vector<ParamRef>& params, const std::string& name);
// Copies `value` into the named weight; the shapes must match exactly.
void set_weight(const std::vector<ParamRef>& params, const std::string& name, const Tensor& value);
void zero_grads(const std::vector<ParamRef>& params);

// Integer ids stored in a float tensor (token ids, positions, labels): checks each is an integer
// in [0, limit) and throws InvalidArgument naming `name`, the value and the element otherwise.
std::vector<int64_t> read_ids(const Tensor& t, int64_t limit, const std::string& name);

}  // namespace sparsemoe
