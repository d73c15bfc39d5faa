// Dispatch, expert FFN and combine over a RoutingPlan (see dispatch.h). All loops are
// partitioned by shape and sum in the plan's fixed row order, so bits do not depend on threads.
#include "sparsemoe/moe/dispatch.h"

#include <chrono>
#include <cstring>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

ExpertShard expert_shard(int64_t E, int rank, int size) {
  const int64_t first = rank * E / size, next = (rank + 1) * E / size;
  return {first, next - first};
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The FFN's weights and gradients restricted to the shard's experts: their blocks of the stacked
// tensors. Packed inference copies index all E experts, so the shard reads the weights in place.
FfnParams shard_params(FfnParams p, const ExpertShard& s) {
  const int64_t F1 = p.width1();
  p.w1 += s.first * p.H * F1;
  p.w2 += s.first * p.F * p.H;
  if (p.b1) p.b1 += s.first * F1;
  if (p.b2) p.b2 += s.first * p.H;
  p.E = s.count;
  p.w1_packed = p.w2_packed = nullptr;
  return p;
}
FfnGrads shard_grads(FfnGrads g, const FfnParams& p, const ExpertShard& s) {
  const int64_t F1 = p.width1();
  if (g.w1) g.w1 += s.first * p.H * F1;
  if (g.w2) g.w2 += s.first * p.F * p.H;
  if (g.b1) g.b1 += s.first * F1;
  if (g.b2) g.b2 += s.first * p.H;
  return g;
}

// Who sends what where (collective: every rank's per-expert row counts are gathered), and the
// permutation from the received order (source rank, then expert, then its rows) to the owned
// experts' order (expert, then source rank, then rows). Ranks hold consecutive groups in rank
// order and a plan's rows of one expert are in (group, slot) order, so the owned order is
// (expert, global group, slot): exactly one process's plan order.
void plan_exchange(const RoutingPlan& plan, Communicator& comm, ExchangeRows& ep) {
  const int P = comm.size(), me = comm.rank();
  const int64_t E = plan.E;
  ep.shard = expert_shard(E, me, P);
  std::vector<int64_t> mine(E);
  for (int64_t e = 0; e < E; ++e) mine[e] = plan.expert_offsets[e + 1] - plan.expert_offsets[e];
  ep.counts.resize(P * E);
  comm.allgather(mine.data(), E * static_cast<int64_t>(sizeof(int64_t)), ep.counts.data());
  ep.send_rows.assign(P, 0);
  ep.recv_rows.assign(P, 0);
  std::vector<int64_t> base(P + 1, 0);  // where rank s's rows start in the received order
  const int64_t first = ep.shard.first, last = first + ep.shard.count;
  for (int p = 0; p < P; ++p) {
    const ExpertShard sh = expert_shard(E, p, P);
    ep.send_rows[p] = plan.expert_offsets[sh.first + sh.count] - plan.expert_offsets[sh.first];
    for (int64_t e = first; e < last; ++e) ep.recv_rows[p] += ep.counts[p * E + e];
    base[p + 1] = base[p] + ep.recv_rows[p];
  }
  ep.perm.resize(base[P]);
  ep.own_offsets.assign(ep.shard.count + 1, 0);
  std::vector<int64_t> at(base.begin(), base.end() - 1);  // next row of rank s's block
  int64_t i = 0;
  for (int64_t e = first; e < last; ++e) {
    for (int p = 0; p < P; ++p)
      for (int64_t j = 0; j < ep.counts[p * E + e]; ++j) ep.perm[i++] = at[p]++;
    ep.own_offsets[e - first + 1] = i;
  }
}

// dst[i] = src[perm[i]] (gather) or dst[perm[i]] = src[i] (scatter), rows of H floats.
void permute_rows(const std::vector<int64_t>& perm, const float* src, float* dst, int64_t H,
                  bool gather) {
  parallel_for_range(static_cast<int64_t>(perm.size()), 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t from = gather ? perm[i] : i, to = gather ? i : perm[i];
      std::memcpy(dst + to * H, src + from * H, H * sizeof(float));
    }
  });
}

}  // namespace

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
                     const ForwardOptions& opt, ExpertRows& rows, Communicator* comm) {
  const int64_t H = experts.weights().H;
  dispatch(plan, x, H, rows);
  rows.ys.resize({plan.rows(), H});
  if (!comm || comm->size() == 1) {
    rows.drop = experts.dropout(opt, rows.row_ids.data());
    ffn_forward(experts.weights().params(), plan.expert_offsets.data(), rows.xs.data(),
                rows.ys.data(), rows.drop, rows.ffn);
    combine(plan, rows, H, y);
    return;
  }
  // Expert parallelism: rows to their experts' owners, the owned experts on what arrived, the
  // outputs back.
  ExchangeRows& ep = rows.ep;
  const int64_t bytes0 = comm->bytes_sent();
  auto t0 = Clock::now();
  plan_exchange(plan, *comm, ep);
  const int64_t owned = static_cast<int64_t>(ep.perm.size());
  ep.recv.resize({owned, H});
  ep.recv_ids.resize(owned);
  auto ids = comm->start_alltoallv(rows.row_ids.data(), ep.send_rows.data(), ep.recv_ids.data(),
                                   ep.recv_rows.data(), sizeof(uint64_t));
  comm->alltoallv(rows.xs.data(), ep.send_rows.data(), ep.recv.data(), ep.recv_rows.data(),
                  H * static_cast<int64_t>(sizeof(float)));
  ids->wait();
  ep.own_xs.resize({owned, H});
  permute_rows(ep.perm, ep.recv.data(), ep.own_xs.data(), H, true);
  ep.own_ids.resize(owned);
  for (int64_t i = 0; i < owned; ++i) ep.own_ids[i] = ep.recv_ids[ep.perm[i]];
  ep.exchange_seconds = seconds_since(t0);
  t0 = Clock::now();
  ep.own_ys.resize({owned, H});
  ep.drop = experts.dropout(opt, ep.own_ids.data());
  ffn_forward(shard_params(experts.weights().params(), ep.shard), ep.own_offsets.data(),
              ep.own_xs.data(), ep.own_ys.data(), ep.drop, ep.ffn);
  ep.compute_seconds = seconds_since(t0);
  t0 = Clock::now();
  permute_rows(ep.perm, ep.own_ys.data(), ep.recv.data(), H, false);
  comm->alltoallv(ep.recv.data(), ep.recv_rows.data(), rows.ys.data(), ep.send_rows.data(),
                  H * static_cast<int64_t>(sizeof(float)));
  ep.exchange_seconds += seconds_since(t0);
  ep.bytes_sent = comm->bytes_sent() - bytes0;
  combine(plan, rows, H, y);
}

void experts_backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                      float* dx, ExpertRows& rows, Communicator* comm) {
  const int64_t H = experts.weights().H;
  combine_backward(plan, dy, H, rows);
  rows.dxs.resize({plan.rows(), H});
  if (!comm || comm->size() == 1) {
    rows.drop.row_id = rows.row_ids.data();
    ffn_backward(experts.weights().params(), plan.expert_offsets.data(), rows.xs.data(),
                 rows.dys.data(), rows.dxs.data(), rows.drop, rows.ffn, experts.weights().grads());
    dispatch_backward(plan, rows, H, dx);
    return;
  }
  ExchangeRows& ep = rows.ep;
  check_arg(ep.own_xs.numel() == static_cast<int64_t>(ep.perm.size()) * H,
            "experts_backward: the forward ran without expert parallelism");
  const int64_t bytes0 = comm->bytes_sent();
  auto t0 = Clock::now();
  const int64_t owned = static_cast<int64_t>(ep.perm.size());
  comm->alltoallv(rows.dys.data(), ep.send_rows.data(), ep.recv.data(), ep.recv_rows.data(),
                  H * static_cast<int64_t>(sizeof(float)));
  ep.own_dys.resize({owned, H});
  permute_rows(ep.perm, ep.recv.data(), ep.own_dys.data(), H, true);
  ep.exchange_seconds += seconds_since(t0);
  t0 = Clock::now();
  ep.own_dxs.resize({owned, H});
  ep.drop.row_id = ep.own_ids.data();
  const FfnParams p = experts.weights().params();
  ffn_backward(shard_params(p, ep.shard), ep.own_offsets.data(), ep.own_xs.data(),
               ep.own_dys.data(), ep.own_dxs.data(), ep.drop, ep.ffn,
               shard_grads(experts.weights().grads(), p, ep.shard));
  ep.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  permute_rows(ep.perm, ep.own_dxs.data(), ep.recv.data(), H, false);
  comm->alltoallv(ep.recv.data(), ep.recv_rows.data(), rows.dxs.data(), ep.send_rows.data(),
                  H * static_cast<int64_t>(sizeof(float)));
  ep.exchange_seconds += seconds_since(t0);
  ep.bytes_sent += comm->bytes_sent() - bytes0;
  dispatch_backward(plan, rows, H, dx);
}

}  // namespace sparsemoe
