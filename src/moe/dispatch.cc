// Dispatch, expert FFN and combine over a RoutingPlan (see dispatch.h). All loops are
// partitioned by shape and sum in the plan's fixed row order, so bits do not depend on threads.
#include "sparsemoe/moe/dispatch.h"

#include <cstring>

#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

void dispatch(const RoutingPlan& plan, const float* x, int64_t H, ExpertRows& rows) {
  const int64_t E = plan.E, R = plan.rows();
  rows.xs.resize({R, H});
  rows.row_ids.resize(R);
  parallel_for(E, [&](int64_t e) {
    for (int64_t r = plan.expert_offsets[e]; r < plan.expert_offsets[e + 1]; ++r) {
      std::memcpy(rows.xs.data() + r * H, x + static_cast<int64_t>(plan.row_token[r]) * H,
                  H * sizeof(float));
      rows.row_ids[r] = plan.dense_slot_id(e, r);
    }
  });
}

void combine(const RoutingPlan& plan, const ExpertRows& rows, int64_t H, float* y) {
  const float* ys = rows.ys.data();
  parallel_for_range(plan.G * plan.T, 64, [&](int64_t b, int64_t e) {
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

void combine_backward(const RoutingPlan& plan, const float* dy, int64_t H, ExpertRows& rows) {
  const int64_t R = plan.rows();
  rows.dys.resize({R, H});
  rows.dweight.resize(R);
  parallel_for_range(R, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = dy + static_cast<int64_t>(plan.row_token[r]) * H;
      const float* o = rows.ys.data() + r * H;
      const float w = plan.row_weight[r];
      float* d = rows.dys.data() + r * H;
      double dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        dot += static_cast<double>(g[h]) * o[h];
        d[h] = w * g[h];
      }
      rows.dweight[r] = static_cast<float>(dot);
    }
  });
}

void dispatch_backward(const RoutingPlan& plan, const ExpertRows& rows, int64_t H, float* dx) {
  parallel_for_range(plan.G * plan.T, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      float* out = dx + n * H;
      std::memset(out, 0, H * sizeof(float));
      for (int64_t i = plan.token_offsets[n]; i < plan.token_offsets[n + 1]; ++i) {
        const float* d = rows.dxs.data() + static_cast<int64_t>(plan.token_rows[i]) * H;
        for (int64_t h = 0; h < H; ++h) out[h] += d[h];
      }
    }
  });
}

void experts_forward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* x, float* y,
                     const ForwardOptions& opt, ExpertRows& rows) {
  const int64_t H = experts.weights().H;
  dispatch(plan, x, H, rows);
  rows.ys.resize({plan.rows(), H});
  rows.drop = experts.dropout(opt, rows.row_ids.data());
  ffn_forward(experts.weights().params(), plan.expert_offsets.data(), rows.xs.data(),
              rows.ys.data(), rows.drop, rows.ffn);
  combine(plan, rows, H, y);
}

void experts_backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                      float* dx, ExpertRows& rows) {
  const int64_t H = experts.weights().H;
  combine_backward(plan, dy, H, rows);
  rows.dxs.resize({plan.rows(), H});
  rows.drop.row_id = rows.row_ids.data();
  ffn_backward(experts.weights().params(), plan.expert_offsets.data(), rows.xs.data(),
               rows.dys.data(), rows.dxs.data(), rows.drop, rows.ffn, experts.weights().grads());
  dispatch_backward(plan, rows, H, dx);
}

}  // namespace sparsemoe
