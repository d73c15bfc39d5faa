// lingvo's Top2Gating / SentenceTop2Gating / TaskTop2Gating (see gshard_gating.h).
#include "sparsemoe/lingvo/gshard_gating.h"

#include <cstring>
#include <unordered_map>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"

namespace sparsemoe {

namespace {

constexpr uint64_t kGateTag = 0x47415445;

// Segment id -> dense index in order of first appearance; padding (0) -> -1.
std::vector<int64_t> segment_index(const int32_t* seg, int64_t N, int64_t& count) {
  std::unordered_map<int32_t, int64_t> ids;
  std::vector<int64_t> idx(N);
  for (int64_t n = 0; n < N; ++n) {
    check_arg(seg[n] >= 0, "segment_id: expected ids >= 0 (0 = padding), got " +
                               std::to_string(seg[n]) + " at token " + std::to_string(n));
    if (seg[n] == 0) {
      idx[n] = -1;
      continue;
    }
    auto [it, added] = ids.emplace(seg[n], static_cast<int64_t>(ids.size()));
    idx[n] = it->second;
  }
  count = static_cast<int64_t>(ids.size());
  return idx;
}

}  // namespace

namespace {

// out[n] (=, or += when accumulate) the mean of in over n's segment; padding tokens get 0.
void segment_mean(const int32_t* seg, int64_t N, int64_t M, const float* in, float* out,
                  bool accumulate) {
  int64_t K = 0;
  const std::vector<int64_t> idx = segment_index(seg, N, K);
  std::vector<double> sum(K * M, 0.0);
  std::vector<int64_t> cnt(K, 0);
  for (int64_t n = 0; n < N; ++n) {
    if (idx[n] < 0) continue;
    ++cnt[idx[n]];
    for (int64_t m = 0; m < M; ++m) sum[idx[n] * M + m] += in[n * M + m];
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const float v = idx[n] < 0 ? 0.f : static_cast<float>(sum[idx[n] * M + m] / cnt[idx[n]]);
      out[n * M + m] = accumulate ? out[n * M + m] + v : v;
    }
}

}  // namespace

void sentence_embeddings(const float* x, const int32_t* seg, int64_t N, int64_t M, float* out) {
  segment_mean(seg, N, M, x, out, false);
}

void sentence_embeddings_backward(const int32_t* seg, int64_t N, int64_t M, const float* dout,
                                  float* dx) {
  // The segment mean is a symmetric linear map (out = P x with P = P^T), so dx += P dout.
  segment_mean(seg, N, M, dout, dx, true);
}

namespace {

constexpr uint64_t kGateInitTag = 0x524f55544552ull, kTop2Stream = 0x544f5032;

RouterConfig gate_router(const Top2GatingConfig& c) {
  RouterConfig r;
  r.type = RouterType::kTop2;
  r.num_experts = c.num_experts;
  r.num_selected_experts = 2;
  r.use_bias = false;  // lingvo: logits = einsum('GSM,ME->GSE')
  r.top2 = c.options;
  r.local_dispatch = c.local_dispatch;
  r.sample_in_eval = c.sample_in_eval;
  r.load_balancing_loss_weight = c.aux_loss_weight;
  r.kernel_init_stddev = c.init_stddev;
  return r;
}

}  // namespace

Top2Gating::Top2Gating(const Top2GatingConfig& config, GateInput input)
    : config_(config),
      input_(input),
      router_((check_arg(config.model_dim >= 1,
                         "model_dim: expected >= 1, got " + std::to_string(config.model_dim)),
               gate_router(config))),
      policy_((router_.validate(), make_policy(router_))),
      gate_(config.model_dim, config.num_experts, false, config.init_stddev,
            derive_key(derive_key(config.seed, kGateTag), kGateInitTag)) {
  check_arg(config.expert_capacity_dim >= 0, "expert_capacity_dim: expected >= 0");
  check_arg(config.capacity_factor >= 0, "capacity_factor: expected >= 0");
}

double Top2Gating::forward(const Tensor& inputs, const Tensor* paddings,
                           const std::vector<int32_t>* segment_id, const Tensor* task_embeddings,
                           const ForwardOptions& opt) {
  const int64_t M = config_.model_dim;
  check_arg(inputs.rank() == 3 && inputs.dim(2) == M,
            "inputs: expected shape [G, S, M=" + std::to_string(M) + "], got " +
                shape_str(inputs.shape()));
  const int64_t G = inputs.dim(0), S = inputs.dim(1), N = G * S;
  G_ = G, S_ = S;
  if (paddings) check_shape("paddings", paddings->shape(), {G, S}, "[G, S]");
  const float* gate_in = inputs.data();
  if (input_ == GateInput::kSentence) {
    check_arg(segment_id && static_cast<int64_t>(segment_id->size()) == N,
              "segment_id: SentenceTop2Gating needs G*S=" + std::to_string(N) + " ids");
    segment_id_ = *segment_id;
    sent_.resize({N, M});
    sentence_embeddings(inputs.data(), segment_id_.data(), N, M, sent_.data());
    gate_in = sent_.data();
  } else if (input_ == GateInput::kTask) {
    check_arg(task_embeddings != nullptr, "task_embeddings: TaskTop2Gating needs them");
    check_shape("task_embeddings", task_embeddings->shape(), {G, S, M}, "[G, S, M]");
    gate_in = task_embeddings->data();
  }
  // local_dispatch=false gates the whole batch as one group.
  const int64_t g = config_.local_dispatch ? G : 1, s = config_.local_dispatch ? S : N;
  CapacityRule rule;
  rule.capacity_factor = input_ == GateInput::kTask ? 0.0 : config_.capacity_factor;
  rule.expert_capacity_dim = config_.expert_capacity_dim;
  const int64_t C = policy_->capacity(rule, s, config_.num_experts);
  gate_forward(gate_, gate_in, N, M, {}, gate_in_, rec_.logits);
  const uint64_t key = derive_key(derive_key(config_.seed, kGateTag, opt.step), kTop2Stream);
  return route_logits(*policy_, router_, rec_.logits.data(), g, s, C,
                      paddings ? paddings->data() : nullptr, opt.training, key, rec_)
      .load_balancing_loss;
}

void Top2Gating::dense(Tensor& dispatch, Tensor& combine) const {
  const RoutingPlan& p = plan();
  dispatch.resize({G_, S_, p.E, p.C});
  combine.resize({G_, S_, p.E, p.C});
  p.to_dense(dispatch.data(), combine.data());
}

void Top2Gating::backward(const Tensor& dcombine, Tensor& dinputs) {
  const RoutingPlan& p = plan();
  const int64_t E = p.E, C = p.C;
  check_shape("dcombine", dcombine.shape(), {G_, S_, E, C}, "[G, S, E, C]");
  // Each row is one (token, expert) slot: gather its combine gradient.
  dweight_.resize(p.rows());
  for (int64_t r = 0; r < p.rows(); ++r)
    dweight_[r] = dcombine[(p.row_token[r] * E + p.row_expert[r]) * C + p.row_slot[r]];
  backward_rows(dweight_.data(), dinputs);
}

void Top2Gating::backward_rows(const float* dweight, Tensor& dinputs) {
  const int64_t N = G_ * S_, M = config_.model_dim;
  check_shape("dinputs", dinputs.shape(), {G_, S_, M}, "[G, S, M]");
  dlogits_.resize({N, config_.num_experts});
  route_logits_backward(*policy_, router_, rec_, dweight, 1.0, dlogits_.data());
  float* dx = dinputs.data();
  if (input_ == GateInput::kSentence) {
    dgate_.resize({N, M});
    dgate_.zero();
    dx = dgate_.data();
  }
  gate_backward(gate_, gate_in_, dlogits_.data(), {}, work_, dx);
  if (input_ == GateInput::kSentence)
    sentence_embeddings_backward(segment_id_.data(), N, M, dgate_.data(), dinputs.data());
}

}  // namespace sparsemoe
