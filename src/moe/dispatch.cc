// Dispatch, expert FFN and combine over a RoutingPlan (see dispatch.h). All loops are
// partitioned by shape and sum in the plan's fixed row order, so bits do not depend on threads.
#include "sparsemoe/moe/dispatch.h"

#include <chrono>
#include <cstring>
#include <functional>

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
// tensors, which hold experts [expert0, expert0 + p.E) (all of them unless the storage is sharded).
// Packed inference copies index all held experts, so the shard reads the weights in place.
FfnParams shard_params(FfnParams p, const ExpertShard& s, int64_t expert0 = 0) {
  const int64_t F1 = p.width1(), at = s.first - expert0;
  check_arg(at >= 0 && at + s.count <= p.E,
            "MoeLayer: experts [" + std::to_string(s.first) + ", " +
                std::to_string(s.first + s.count) + ") are not held by this process (it holds [" +
                std::to_string(expert0) + ", " + std::to_string(expert0 + p.E) + "))");
  p.w1 += at * p.H * F1;
  p.w2 += at * p.F * p.H;
  if (p.b1) p.b1 += at * F1;
  if (p.b2) p.b2 += at * p.H;
  p.E = s.count;
  p.w1_packed = p.w2_packed = nullptr;
  return p;
}
FfnGrads shard_grads(FfnGrads g, const FfnParams& p, const ExpertShard& s, int64_t expert0 = 0) {
  const int64_t F1 = p.width1(), at = s.first - expert0;
  if (g.w1) g.w1 += at * p.H * F1;
  if (g.w2) g.w2 += at * p.F * p.H;
  if (g.b1) g.b1 += at * F1;
  if (g.b2) g.b2 += at * p.H;
  return g;
}

// Every expert's weights, for the single-process paths.
FfnParams whole_params(FeedForwardExperts& experts) {
  const FfnWeights& w = experts.weights();
  check_arg(w.whole(), "MoeLayer: this process holds experts [" + std::to_string(w.expert0) + ", " +
                           std::to_string(w.expert0 + w.held) + ") of " + std::to_string(w.E) +
                           " (expert-sharded storage): it runs only with its communicator");
  return w.params();
}

// Who sends what where (collective: every rank's per-expert row counts and unit are gathered).
// Rows arrive by source rank, then owned expert, then the source's plan order (group, slot).
void plan_exchange(const RoutingPlan& plan, int64_t unit, Communicator& comm, ExchangeRows& ep) {
  const int P = comm.size(), me = comm.rank();
  const int64_t E = plan.E;
  ep.shard = expert_shard(E, me, P);
  std::vector<int64_t> mine(E + 1);
  for (int64_t e = 0; e < E; ++e) mine[e] = plan.expert_offsets[e + 1] - plan.expert_offsets[e];
  mine[E] = unit;
  ep.counts.resize(P * (E + 1));
  comm.allgather(mine.data(), (E + 1) * static_cast<int64_t>(sizeof(int64_t)), ep.counts.data());
  const int64_t first = ep.shard.first, n = ep.shard.count;
  ep.send_rows.assign(P, 0);
  ep.recv_rows.assign(P, 0);
  ep.base.assign(P + 1, 0);
  ep.offsets.assign(P * (n + 1), 0);
  ep.source_unit.resize(P);
  for (int p = 0; p < P; ++p) {
    const ExpertShard sh = expert_shard(E, p, P);
    ep.send_rows[p] = plan.expert_offsets[sh.first + sh.count] - plan.expert_offsets[sh.first];
    int64_t* off = ep.offsets.data() + p * (n + 1);
    for (int64_t e = 0; e < n; ++e) off[e + 1] = off[e] + ep.counts[p * (E + 1) + first + e];
    ep.recv_rows[p] = off[n];
    ep.base[p + 1] = ep.base[p] + off[n];
    ep.source_unit[p] = ep.counts[p * (E + 1) + E];
  }
}

// The owned experts' gradient blocks, one part per unit: [w1 | b1 | w2 | b2] of the shard.
struct PartLayout {
  int64_t w1 = 0, b1 = 0, w2 = 0, b2 = 0, size = 0;
};
PartLayout part_layout(const FfnParams& p, const FfnGrads& g, int64_t count) {
  PartLayout l;
  const int64_t F1 = p.width1();
  l.w1 = 0;
  l.b1 = l.w1 + (g.w1 ? count * p.H * F1 : 0);
  l.w2 = l.b1 + (g.b1 ? count * F1 : 0);
  l.b2 = l.w2 + (g.w2 ? count * p.F * p.H : 0);
  l.size = l.b2 + (g.b2 ? count * p.H : 0);
  return l;
}
FfnGrads part_grads(float* part, const PartLayout& l, const FfnGrads& g) {
  return {g.w1 ? part + l.w1 : nullptr, g.b1 ? part + l.b1 : nullptr, g.w2 ? part + l.w2 : nullptr,
          g.b2 ? part + l.b2 : nullptr};
}

// Once every unit's part is in: their tree_sum into the owned experts' gradients.
void finish_parts(ExchangeRows& ep, const PartLayout& l, const FfnGrads& owned) {
  ExpertGradParts& parts = ep.parts;
  const int64_t units = static_cast<int64_t>(parts.filled.size());
  if (parts.count < units) return;
  tree_sum_in_place(parts.data.data(), units, l.size);  // parts are cleared before reuse
  const float* sum = parts.data.data();
  auto add = [&](float* g, int64_t at, int64_t end) {
    for (int64_t i = at; g && i < end; ++i) g[i - at] = g[i - at] + sum[i];
  };
  add(owned.w1, l.w1, l.b1);
  add(owned.b1, l.b1, l.w2);
  add(owned.w2, l.w2, l.b2);
  add(owned.b2, l.b2, l.size);
  parts.count = 0;
  std::fill(parts.filled.begin(), parts.filled.end(), 0);
}

// The return chunks: chunk c of K is each owner's experts [c * n / K, (c + 1) * n / K) of its
// shard (n its experts; empty chunks allowed). Sending a chunk home as soon as it is computed lets
// the next chunk's compute hide its transfer.
struct Chunk {
  int64_t lo, hi;
};
Chunk chunk_of(int64_t n, int c, int K) { return {c * n / K, (c + 1) * n / K}; }

// Chunk c's rows from the owner's buffer (source-major: each source's rows of my experts) to each
// source's plan-ordered buffer, where owner q's chunk is one contiguous block.
std::unique_ptr<CommRequest> start_return(const RoutingPlan& plan, const ExchangeRows& ep, int c,
                                          int K, const float* own, float* home, int64_t H,
                                          Communicator& comm) {
  const int P = comm.size();
  const int64_t n = ep.shard.count;
  const Chunk mine = chunk_of(n, c, K);
  std::vector<int64_t> send_rows(P), send_at(P), recv_rows(P), recv_at(P);
  for (int p = 0; p < P; ++p) {
    const int64_t* off = ep.offsets.data() + p * (n + 1);
    send_at[p] = ep.base[p] + off[mine.lo];
    send_rows[p] = off[mine.hi] - off[mine.lo];
    const ExpertShard sh = expert_shard(plan.E, p, P);
    const Chunk theirs = chunk_of(sh.count, c, K);
    recv_at[p] = plan.expert_offsets[sh.first + theirs.lo];
    recv_rows[p] = plan.expert_offsets[sh.first + theirs.hi] - recv_at[p];
  }
  return comm.start_alltoallv_at(own, send_rows.data(), send_at.data(), home, recv_rows.data(),
                                 recv_at.data(), H * static_cast<int64_t>(sizeof(float)));
}

// The received rows of every source, chunk by chunk (run(source, chunk)), each chunk sent home
// from `own` to `home` as soon as it is computed while the next one computes, the transfers polled
// between calls; `meanwhile` runs after the last chunk has left, then the transfers are awaited.
// The own rows were computed already when `skip_own` (overlap). Times go to ep's counters.
void compute_and_return(const RoutingPlan& plan, ExchangeRows& ep, int K, bool skip_own,
                        const std::function<void(int, int)>& run, const float* own, float* home,
                        int64_t H, Communicator& comm, const std::function<void()>& meanwhile) {
  const int P = comm.size(), me = comm.rank();
  std::vector<std::unique_ptr<CommRequest>> back;
  for (int c = 0; c < K; ++c) {
    auto t0 = Clock::now();
    for (int p = 0; p < P; ++p) {
      if (p != me || !skip_own) run(p, c);
      for (auto& b : back) b->test();
    }
    ep.compute_seconds += seconds_since(t0);
    t0 = Clock::now();
    back.push_back(start_return(plan, ep, c, K, own, home, H, comm));
    ep.exchange_seconds += seconds_since(t0);
  }
  auto t0 = Clock::now();
  if (meanwhile) meanwhile();
  ep.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  for (auto& b : back) b->wait();
  ep.exchange_seconds += seconds_since(t0);
}

// Source p's rows of my experts in chunk r: their offsets from the chunk's first row, and where
// that row is in the source-major buffers.
int64_t chunk_rows(const ExchangeRows& ep, int p, Chunk r, std::vector<int64_t>& local) {
  const int64_t n = ep.shard.count;
  const int64_t* off = ep.offsets.data() + p * (n + 1);
  local.resize(static_cast<size_t>(r.hi - r.lo + 1));
  for (int64_t i = 0; i <= r.hi - r.lo; ++i) local[i] = off[r.lo + i] - off[r.lo];
  return ep.base[p] + off[r.lo];
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
                     const ForwardOptions& opt, ExpertRows& rows, Communicator* comm, int64_t unit,
                     int64_t units) {
  const int64_t H = experts.weights().H;
  dispatch(plan, x, H, rows);
  rows.ys.resize({plan.rows(), H});
  if (!comm || comm->size() == 1) {
    rows.drop = experts.dropout(opt, rows.row_ids.data());
    ffn_forward(whole_params(experts), plan.expert_offsets.data(), rows.xs.data(), rows.ys.data(),
                rows.drop, rows.ffn, opt.save_for_backward);
    combine(plan, rows, H, y);
    return;
  }
  // Expert parallelism: rows to their experts' owners, the owned experts on each source's rows,
  // the outputs back in the order they came. With overlap, this rank's own rows for its experts
  // (already here) are computed expert by expert while the others' rows travel, the transfer
  // polled between experts (MPI moves data only inside its calls).
  ExchangeRows& ep = rows.ep;
  const int P = comm->size(), me = comm->rank();
  const int64_t bytes0 = comm->bytes_sent();
  auto t0 = Clock::now();
  ep.replicated = false;
  plan_exchange(plan, unit, *comm, ep);
  for (int p = 0; p < P; ++p)
    check_arg(ep.source_unit[p] >= 0 && ep.source_unit[p] < units,
              "MoeLayer: rank " + std::to_string(p) + " holds unit " +
                  std::to_string(ep.source_unit[p]) +
                  ", outside the step's units=" + std::to_string(units));
  const int64_t owned = ep.base[P], n = ep.shard.count;
  ep.recv.resize({owned, H});
  ep.recv_ids.resize(owned);
  auto ids = comm->start_alltoallv(rows.row_ids.data(), ep.send_rows.data(), ep.recv_ids.data(),
                                   ep.recv_rows.data(), sizeof(uint64_t));
  auto xs = comm->start_alltoallv(rows.xs.data(), ep.send_rows.data(), ep.recv.data(),
                                  ep.recv_rows.data(), H * static_cast<int64_t>(sizeof(float)));
  ep.exchange_seconds = seconds_since(t0);
  ep.compute_seconds = 0;
  ep.own_ys.resize({owned, H});
  ep.drop = experts.dropout(opt, nullptr);
  // Received rows are computed per (source, chunk of my experts); with overlap each chunk's
  // outputs start home while the next chunk computes.
  const int K = ep.used_chunks = ep.overlap ? std::max(1, ep.chunks) : 1;
  ep.ffn.resize(static_cast<size_t>(P) * K);
  ep.own_ffn.resize(n);
  const FfnParams sp =
      shard_params(experts.weights().params(), ep.shard, experts.weights().expert0);
  const int64_t self0 = plan.expert_offsets[ep.shard.first];  // my rows for my experts
  const int64_t* self_off = ep.offsets.data() + me * (n + 1);
  std::vector<int64_t> local;
  auto run = [&](int p, int c) {  // source p's received rows of chunk c, one call
    const Chunk r = chunk_of(n, c, K);
    if (r.hi == r.lo) return;
    const int64_t at = chunk_rows(ep, p, r, local);
    FfnDropout d = ep.drop;
    d.row_id = ep.recv_ids.data() + at;
    ffn_forward(shard_params(sp, {r.lo, r.hi - r.lo}), local.data(), ep.recv.data() + at * H,
                ep.own_ys.data() + at * H, d, ep.ffn[static_cast<size_t>(p) * K + c]);
  };
  t0 = Clock::now();
  if (ep.overlap) {
    for (int64_t e = 0; e < n; ++e) {
      const int64_t r0 = self_off[e], one[2] = {0, self_off[e + 1] - r0};
      FfnDropout d = ep.drop;
      d.row_id = rows.row_ids.data() + self0 + r0;
      ffn_forward(shard_params(sp, {e, 1}), one, rows.xs.data() + (self0 + r0) * H,
                  ep.own_ys.data() + (ep.base[me] + r0) * H, d, ep.own_ffn[e]);
      xs->test();
    }
  }
  ep.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  ids->wait();
  xs->wait();
  ep.exchange_seconds += seconds_since(t0);
  compute_and_return(plan, ep, K, ep.overlap, run, ep.own_ys.data(), rows.ys.data(), H, *comm, {});
  ep.bytes_sent = comm->bytes_sent() - bytes0;
  ep.overlapped = ep.overlap;
  // This step's parts: sized for its units on first use, then reused.
  ExpertGradParts& parts = ep.parts;
  if (static_cast<int64_t>(parts.filled.size()) != units) {
    check_arg(parts.count == 0, "MoeLayer: the step's units changed to " + std::to_string(units) +
                                    " before all of the previous step's were run");
    parts.filled.assign(units, 0);
  }
  combine(plan, rows, H, y);
}

void experts_forward_replicated(const RoutingPlan& plan, FeedForwardExperts& experts,
                                const float* x, float* y, const ForwardOptions& opt,
                                ExpertRows& rows, Communicator& comm) {
  const int64_t H = experts.weights().H, E = plan.E;
  const int P = comm.size();
  check_arg(!opt.training,
            "MoeLayer: a replicated call (ForwardOptions::replicated) is inference "
            "only: set training=false");
  dispatch(plan, x, H, rows);
  rows.ys.resize({plan.rows(), H});
  ExchangeRows& ep = rows.ep;
  const int64_t bytes0 = comm.bytes_sent();
  ep.replicated = true;
  ep.shard = expert_shard(E, comm.rank(), P);
  // My experts on my copy of their rows: one contiguous block of the expert-major plan.
  auto t0 = Clock::now();
  const int64_t r0 = plan.expert_offsets[ep.shard.first];
  std::vector<int64_t> off(ep.shard.count + 1);
  for (int64_t e = 0; e <= ep.shard.count; ++e)
    off[e] = plan.expert_offsets[ep.shard.first + e] - r0;
  rows.drop = experts.dropout(opt, rows.row_ids.data() + r0);
  ffn_forward(shard_params(experts.weights().params(), ep.shard, experts.weights().expert0),
              off.data(), rows.xs.data() + r0 * H, rows.ys.data() + r0 * H, rows.drop, rows.ffn);
  ep.compute_seconds = seconds_since(t0);
  // Every owner's block to every rank.
  t0 = Clock::now();
  for (int q = 0; q < P; ++q) {
    const ExpertShard sh = expert_shard(E, q, P);
    const int64_t b = plan.expert_offsets[sh.first],
                  n = plan.expert_offsets[sh.first + sh.count] - b;
    if (n > 0)
      comm.broadcast(rows.ys.data() + b * H, n * H * static_cast<int64_t>(sizeof(float)), q);
  }
  ep.exchange_seconds = seconds_since(t0);
  ep.bytes_sent = comm.bytes_sent() - bytes0;
  combine(plan, rows, H, y);
}

void experts_backward(const RoutingPlan& plan, FeedForwardExperts& experts, const float* dy,
                      float* dx, ExpertRows& rows, Communicator* comm, GradMode mode) {
  const int64_t H = experts.weights().H;
  const bool overwrite = mode == GradMode::kOverwrite;
  combine_backward(plan, dy, H, rows);
  rows.dxs.resize({plan.rows(), H});
  if (!comm || comm->size() == 1) {
    rows.drop.row_id = rows.row_ids.data();
    FfnGrads grads = experts.weights().grads();
    grads.overwrite = overwrite;
    ffn_backward(whole_params(experts), plan.expert_offsets.data(), rows.xs.data(), rows.dys.data(),
                 rows.dxs.data(), rows.drop, rows.ffn, grads);
    dispatch_backward(plan, rows, H, dx);
    return;
  }
  ExchangeRows& ep = rows.ep;
  // Written gradients: zeroed here, as zero_grads before the call would (the units' parts are
  // kept apart and added at the step's last unit).
  if (overwrite) experts.weights().zero_grads();
  const int P = comm->size(), me = comm->rank();
  check_arg(ep.ffn.size() == static_cast<size_t>(P) * ep.used_chunks &&
                ep.recv.numel() == ep.base[P] * H && !ep.replicated,
            "experts_backward: the forward ran without expert parallelism, or replicated "
            "(inference only)");
  const int64_t bytes0 = comm->bytes_sent();
  auto t0 = Clock::now();
  const int64_t owned = ep.base[P], n = ep.shard.count;
  ep.own_dys.resize({owned, H});
  auto dys = comm->start_alltoallv(rows.dys.data(), ep.send_rows.data(), ep.own_dys.data(),
                                   ep.recv_rows.data(), H * static_cast<int64_t>(sizeof(float)));
  ep.exchange_seconds += seconds_since(t0);
  ep.own_dxs.resize({owned, H});
  const FfnParams p = experts.weights().params();
  const int64_t expert0 = experts.weights().expert0;
  const FfnParams sp = shard_params(p, ep.shard, expert0);
  const FfnGrads owned_grads = shard_grads(experts.weights().grads(), p, ep.shard, expert0);
  const PartLayout layout = part_layout(p, owned_grads, n);
  ExpertGradParts& parts = ep.parts;
  const int64_t units = static_cast<int64_t>(parts.filled.size());
  if (parts.data.numel() != units * layout.size) parts.data.resize({units, layout.size});
  // Source s's part: its unit's, each chain from zero.
  auto part_of = [&](int s) {
    const int64_t u = ep.source_unit[s];
    check_arg(!parts.filled[u], "MoeLayer: unit " + std::to_string(u) +
                                    " was run twice in one step (each of the step's units=" +
                                    std::to_string(units) + " runs once, on one rank)");
    float* part = parts.data.data() + u * layout.size;
    std::fill(part, part + layout.size, 0.f);
    parts.filled[u] = 1;
    ++parts.count;
    return part_grads(part, layout, owned_grads);
  };
  const int K = ep.used_chunks;
  std::vector<int64_t> local;
  std::vector<FfnGrads> part(static_cast<size_t>(P));
  auto run = [&](int s, int c) {  // the forward's (source, chunk) call, backward
    const Chunk r = chunk_of(n, c, K);
    if (r.hi == r.lo) return;
    const int64_t at = chunk_rows(ep, s, r, local);
    FfnDropout d = ep.drop;
    d.row_id = ep.recv_ids.data() + at;
    ffn_backward(shard_params(sp, {r.lo, r.hi - r.lo}), local.data(), ep.recv.data() + at * H,
                 ep.own_dys.data() + at * H, ep.own_dxs.data() + at * H, d,
                 ep.ffn[static_cast<size_t>(s) * K + c],
                 shard_grads(part[s], p, {r.lo, r.hi - r.lo}));
  };
  t0 = Clock::now();
  if (ep.overlapped) {  // my own rows, expert by expert, while the others' gradients travel
    const int64_t self0 = plan.expert_offsets[ep.shard.first];
    const int64_t* self_off = ep.offsets.data() + me * (n + 1);
    const FfnGrads g = part[me] = part_of(me);
    for (int64_t e = 0; e < n; ++e) {
      const int64_t r0 = self_off[e], one[2] = {0, self_off[e + 1] - r0};
      FfnDropout d = ep.drop;
      d.row_id = rows.row_ids.data() + self0 + r0;
      const FfnGrads ge = shard_grads(g, p, {e, 1});  // expert e's blocks of the part
      ffn_backward(shard_params(sp, {e, 1}), one, rows.xs.data() + (self0 + r0) * H,
                   rows.dys.data() + (self0 + r0) * H, ep.own_dxs.data() + (ep.base[me] + r0) * H,
                   d, ep.own_ffn[e], ge);
      dys->test();
    }
  }
  ep.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  dys->wait();
  ep.exchange_seconds += seconds_since(t0);
  for (int s = 0; s < P; ++s)
    if (s != me || !ep.overlapped) part[s] = part_of(s);
  // The tree of the unit parts is added while the last chunk travels.
  compute_and_return(plan, ep, K, ep.overlapped, run, ep.own_dxs.data(), rows.dxs.data(), H, *comm,
                     [&] { finish_parts(ep, layout, owned_grads); });
  ep.bytes_sent += comm->bytes_sent() - bytes0;
  dispatch_backward(plan, rows, H, dx);
}

}  // namespace sparsemoe
