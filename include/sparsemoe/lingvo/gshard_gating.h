// lingvo's gating layers around Top2GatingOnLogits (spec §8, §13): Top2Gating (logits from the
// tokens), SentenceTop2Gating (logits from each token's segment-mean "sentence embedding") and
// TaskTop2Gating (logits from caller-given task embeddings), with gating weights [M, E] and no
// bias, and local_dispatch on/off. Each runs the MoE layer's gate stage and route_logits with the
// top2 policy, so its sparse RoutingPlan and its backward are the ones the MoE layer uses; the
// dense [G, S, E, C] tensors the reference sources return are available from the plan.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/gate.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

// GetSentenceEmbeddings: x [N, M] (all groups flattened), segment_id [N] (0 = padding) -> out
// [N, M]: the mean of all tokens with the same id, over the whole batch; 0 for padding.
void sentence_embeddings(const float* x, const int32_t* segment_id, int64_t N, int64_t M,
                         float* out);
// Adds the gradient w.r.t. x of sentence_embeddings to dx [N, M], given dout [N, M].
void sentence_embeddings_backward(const int32_t* segment_id, int64_t N, int64_t M,
                                  const float* dout, float* dx);

enum class GateInput {
  kTokens,    // Top2Gating
  kSentence,  // SentenceTop2Gating
  kTask,      // TaskTop2Gating (capacity from expert_capacity_dim only)
};

struct Top2GatingConfig {
  int64_t model_dim = 0;  // M
  int64_t num_experts = 1;
  int64_t expert_capacity_dim = 0;  // c_dim
  double capacity_factor = 0.0;     // 0: unset (ignored by kTask, as in lingvo)
  bool local_dispatch = true;
  Top2Options options;
  bool sample_in_eval = false;
  double aux_loss_weight = 0.0;  // backward adds aux_loss_weight * d aux / d w
  double init_stddev = 0.02;
  uint64_t seed = 0;
};

class Top2Gating {
 public:
  Top2Gating(const Top2GatingConfig& config, GateInput input);

  // inputs [G, S, M]; paddings [G, S] or null; segment_id [G*S] for kSentence; task_embeddings
  // [G, S, M] for kTask. Returns the aux loss (unscaled).
  double forward(const Tensor& inputs, const Tensor* paddings,
                 const std::vector<int32_t>* segment_id, const Tensor* task_embeddings,
                 const ForwardOptions& opt);

  const RoutingPlan& plan() const { return rec_.plan; }
  const RoutingRecord& routing() const { return rec_; }
  int64_t capacity() const { return rec_.plan.C; }
  // The reference sources' outputs: dispatch and combine [G, S, E, C] (local_dispatch=false:
  // reshaped back).
  void dense(Tensor& dispatch, Tensor& combine) const;

  // dcombine [G, S, E, C]: gradient w.r.t. the dense combine tensor. Accumulates the gating
  // weights' gradient and adds into dinputs [G, S, M] the gradient w.r.t. the inputs (kTokens,
  // kSentence) or the task embeddings (kTask).
  void backward(const Tensor& dcombine, Tensor& dinputs);
  // The same from dweight [R]: the gradient w.r.t. each plan row's combine weight, as
  // experts_backward returns it (ExpertRows::dweight).
  void backward_rows(const float* dweight, Tensor& dinputs);

  std::vector<ParamRef> params() { return {{"w", &gate_.kernel, &gate_.kernel_grad}}; }

 private:
  Top2GatingConfig config_;
  GateInput input_;
  RouterConfig router_;
  std::unique_ptr<RoutingPolicy> policy_;
  GateWeights gate_;
  int64_t G_ = 0, S_ = 0;
  std::vector<int32_t> segment_id_;
  Tensor sent_;     // [G*S, M] sentence embeddings (kSentence)
  Tensor gate_in_;  // [G*S, M] the gate's input, saved for backward
  RoutingRecord rec_;
  Tensor dlogits_;              // [G*S, E]
  Tensor dgate_;                // [G*S, M] gradient w.r.t. the gate's input
  Tensor work_;                 // [G*S, M]
  std::vector<float> dweight_;  // [R]
};

}  // namespace sparsemoe
