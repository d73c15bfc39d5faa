// Sparse dispatch -> experts -> combine over a RoutingPlan (see apply_gating.h).
#include "sparsemoe/layers/apply_gating.h"

#include <cstring>

#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

void ApplyGating::forward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* x,
                          float* y, const ForwardOptions& opt) {
  const int64_t H = experts.weights().H, E = plan.E, N = plan.G * plan.T, R = plan.rows();
  // Gather: xs[r] = x[token of r]; dropout ids are the rows' dense [G, E, C] slots.
  xs_.resize({R, H});
  ys_.resize({R, H});
  row_ids_.resize(R);
  parallel_for(E, [&](int64_t e) {
    for (int64_t r = plan.expert_offsets[e]; r < plan.expert_offsets[e + 1]; ++r) {
      std::memcpy(xs_.data() + r * H, x + static_cast<int64_t>(plan.row_token[r]) * H,
                  H * sizeof(float));
      row_ids_[r] = plan.dense_slot_id(e, r);
    }
  });
  experts.forward_rows(plan.expert_offsets.data(), xs_.data(), ys_.data(), row_ids_.data(), opt);
  // Combine: y[n] = sum over n's rows of weight * ys[row], in the plan's fixed row order.
  const float* ys = ys_.data();
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      float* out = y + n * H;
      std::memset(out, 0, H * sizeof(float));
      for (int64_t i = plan.token_offsets[n]; i < plan.token_offsets[n + 1]; ++i) {
        const int64_t r = plan.token_rows[i];
        const float w = plan.row_weight[r];
        for (int64_t h = 0; h < H; ++h) out[h] += w * ys[r * H + h];
      }
    }
  });
}

void ApplyGating::backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                           float* dx, float* dcombine) {
  const int64_t H = experts.weights().H, E = plan.E, N = plan.G * plan.T, R = plan.rows();
  // d weight[r] = dy[token] . ys[r]; dys[r] = weight[r] * dy[token].
  dys_.resize({R, H});
  dxs_.resize({R, H});
  dweight_.resize(R);
  parallel_for_range(R, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = dy + static_cast<int64_t>(plan.row_token[r]) * H;
      const float* o = ys_.data() + r * H;
      const float w = plan.row_weight[r];
      float* d = dys_.data() + r * H;
      double dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        dot += static_cast<double>(g[h]) * o[h];
        d[h] = w * g[h];
      }
      dweight_[r] = static_cast<float>(dot);
    }
  });
  experts.backward_rows(dys_.data(), dxs_.data());
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      float* out = dx + n * H;
      std::memset(out, 0, H * sizeof(float));
      for (int64_t i = plan.token_offsets[n]; i < plan.token_offsets[n + 1]; ++i) {
        const float* d = dxs_.data() + static_cast<int64_t>(plan.token_rows[i]) * H;
        for (int64_t h = 0; h < H; ++h) out[h] += d[h];
      }
    }
  });
  // d combine[n, e] = d weight of the (n, e) row (a token has at most one row per expert).
  std::memset(dcombine, 0, static_cast<size_t>(N * E) * sizeof(float));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = plan.expert_offsets[e]; r < plan.expert_offsets[e + 1]; ++r)
      dcombine[static_cast<int64_t>(plan.row_token[r]) * E + e] = dweight_[r];
}

}  // namespace sparsemoe
