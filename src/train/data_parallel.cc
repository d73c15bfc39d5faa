// Data-parallel units: batch slices, the gradient tree and the metrics over units (see
// data_parallel.h).
#include "sparsemoe/train/data_parallel.h"

#include <algorithm>
#include <cstring>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

namespace {

Tensor rows_of(const Tensor& t, int64_t first, int64_t count) {
  if (t.rank() == 0 || t.numel() == 0) return t;
  const int64_t per = t.numel() / t.dim(0);
  Shape s = t.shape();
  s[0] = count;
  Tensor out(s);
  std::memcpy(out.data(), t.data() + first * per, static_cast<size_t>(count * per) * sizeof(float));
  return out;
}

template <class V>
V slice_of(const V& v, int64_t per, int64_t first, int64_t count) {
  if (v.empty()) return v;
  return V(v.begin() + first * per, v.begin() + (first + count) * per);
}

// a = a + b elementwise (left + right, tree_sum's order), in parallel chunks.
void add_right(std::vector<float>& a, const std::vector<float>& b) {
  const int64_t n = static_cast<int64_t>(a.size());
  parallel_for_range(n, 1 << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) a[i] = a[i] + b[i];
  });
}

// The metrics' fields as doubles, with how units combine them.
enum class Combine { kSum, kMean };

template <class M, class F>
void visit_common(M& m, F&& f) {
  f(m.load_balancing_loss, Combine::kSum);
  f(m.router_z_loss, Combine::kSum);
  f(m.unscaled_router_z_loss, Combine::kSum);
  f(m.loss, Combine::kSum);
  f(m.fraction_tokens_left_behind, Combine::kMean);
  f(m.router_confidence, Combine::kMean);
  f(m.expert_usage, Combine::kMean);
}

template <class F>
void visit_metrics(SparseMixerMetrics& m, F&& f) {
  visit_common(m, f);
  for (MoeMetrics& l : m.per_layer) {
    visit_common(l, f);
    f(l.over_capacity_1_ratio, Combine::kMean);
    f(l.over_capacity_2_ratio, Combine::kMean);
  }
}

}  // namespace

void slice_batch(const Batch& batch, int64_t first, int64_t count, Batch& out) {
  const int64_t B = batch.ids.dim(0);
  check_arg(first >= 0 && count >= 0 && first + count <= B,
            "slice_batch: sequences [" + std::to_string(first) + ", " +
                std::to_string(first + count) + ") are not within the batch of " +
                std::to_string(B));
  out.ids = rows_of(batch.ids, first, count);
  out.mask = rows_of(batch.mask, first, count);
  out.positions = rows_of(batch.positions, first, count);
  const int64_t P = batch.positions.numel() ? batch.positions.dim(1) : 0;
  out.mlm_labels = slice_of(batch.mlm_labels, P, first, count);
  out.mlm_weights = slice_of(batch.mlm_weights, P, first, count);
  out.labels = slice_of(batch.labels, 1, first, count);
  double real = 0;
  for (int64_t i = 0; i < out.mask.numel(); ++i) real += out.mask[i];
  out.real_tokens = static_cast<int64_t>(real);
}

void GradientTree::add_unit(const std::vector<ParamRef>& params) {
  int64_t n = 0;
  for (const ParamRef& p : params) n += p.grad->numel();
  Node node;
  if (!spare_.empty()) {
    node.values = std::move(spare_.back());
    spare_.pop_back();
  }
  node.values.resize(static_cast<size_t>(n));
  int64_t at = 0;
  for (const ParamRef& p : params) {
    std::memcpy(node.values.data() + at, p.grad->data(),
                static_cast<size_t>(p.grad->numel()) * sizeof(float));
    at += p.grad->numel();
  }
  node.size = 1;
  stack_.push_back(std::move(node));
  // Merge equal subtrees: with a power-of-two count this builds tree_sum's balanced tree.
  while (stack_.size() >= 2 && stack_[stack_.size() - 2].size == stack_.back().size) {
    Node right = std::move(stack_.back());
    stack_.pop_back();
    add_right(stack_.back().values, right.values);
    stack_.back().size += right.size;
    spare_.push_back(std::move(right.values));
  }
}

void GradientTree::finish(const std::vector<ParamRef>& params, Communicator& comm) {
  check_arg(stack_.size() == 1,
            "GradientTree: the unit count must be a power of two (the sum is a balanced tree)");
  std::vector<float>& total = stack_.back().values;
  // Over the ranks: every run of whole parameters. An expert-sharded parameter's gradient is its
  // holder's alone and already the step's sum (the MoE layer's tree of unit parts).
  for (size_t k = 0, at = 0; k < params.size();) {
    size_t end = k, n = 0;
    while (end < params.size() && params[end].sharded == params[k].sharded)
      n += static_cast<size_t>(params[end++].grad->numel());
    if (!params[k].sharded) comm.allreduce_sum(total.data() + at, static_cast<int64_t>(n));
    at += n;
    k = end;
  }
  int64_t at = 0;
  for (const ParamRef& p : params) {
    std::memcpy(p.grad->data(), total.data() + at,
                static_cast<size_t>(p.grad->numel()) * sizeof(float));
    at += p.grad->numel();
  }
  spare_.push_back(std::move(total));
  stack_.clear();
}

double sum_over_units(const std::vector<double>& local, Communicator& comm) {
  std::vector<const double*> parts;
  for (const double& v : local) parts.push_back(&v);
  double total = 0;
  tree_sum(parts, 1, &total);
  comm.allreduce_sum(&total, 1);
  return total;
}

SparseMixerMetrics combine_unit_metrics(const std::vector<SparseMixerMetrics>& local, int64_t units,
                                        Communicator& comm) {
  check_arg(!local.empty(), "combine_unit_metrics: no units");
  std::vector<std::vector<double>> flat(local.size());
  for (size_t u = 0; u < local.size(); ++u) {
    SparseMixerMetrics m = local[u];
    visit_metrics(m, [&](double& v, Combine) { flat[u].push_back(v); });
    // Token counts ride along as doubles (exact below 2^53).
    for (const MoeMetrics& l : m.per_layer) {
      flat[u].push_back(static_cast<double>(l.num_groups));
      for (int64_t t : l.tokens_per_expert) flat[u].push_back(static_cast<double>(t));
    }
    check_arg(flat[u].size() == flat[0].size(),
              "combine_unit_metrics: the units report different metrics");
  }
  std::vector<const double*> parts;
  for (const auto& f : flat) parts.push_back(f.data());
  std::vector<double> total(flat[0].size());
  tree_sum(parts, static_cast<int64_t>(total.size()), total.data());
  comm.allreduce_sum(total.data(), static_cast<int64_t>(total.size()));
  SparseMixerMetrics out = local[0];
  size_t i = 0;
  const double k = static_cast<double>(units);
  visit_metrics(out, [&](double& v, Combine c) {
    v = c == Combine::kSum ? total[i] : total[i] / k;
    ++i;
  });
  for (size_t l = 0; l < out.per_layer.size(); ++l) {
    MoeMetrics& m = out.per_layer[l];
    m.num_groups = static_cast<int64_t>(total[i++]);
    for (int64_t& t : m.tokens_per_expert) t = static_cast<int64_t>(total[i++]);
    int64_t cap = 0;
    for (const SparseMixerMetrics& u : local) cap = std::max(cap, u.per_layer[l].expert_capacity);
    m.expert_capacity = comm.allreduce_max(cap);
  }
  return out;
}

}  // namespace sparsemoe
