// AdamW, its schedule and global-norm clipping (see adamw.h).
#include "sparsemoe/train/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

namespace {
constexpr int64_t kChunk = 1 << 14;  // fixed reduction chunks: thread-count independent sums

// Every parameter's chunks as one list, so that a step opens one parallel region, not one per
// parameter (a small network has dozens of parameters and a step of a few milliseconds). A stacked
// expert parameter's chunks restart at each expert, so that a rank holding some of the experts
// forms the same chunks as one process. `slot` is the chunk's place in its parameter's whole list
// (expert-major), which global_grad_norm adds in order.
struct Chunk {
  size_t param;
  int64_t begin, end, slot;
};
// Elements of one expert (of the whole tensor if not stacked).
int64_t per_expert(const ParamRef& p) {
  if (p.experts == 0) return p.value->numel();
  int64_t n = 1;
  for (size_t d = 1; d < p.value->shape().size(); ++d) n *= p.value->dim(static_cast<int>(d));
  return n;
}
int64_t chunks_per_block(int64_t n) { return (n + kChunk - 1) / kChunk; }
// Chunk slots of p's whole tensor: every expert's (or the tensor's) chunks.
int64_t slots_of(const ParamRef& p) {
  return (p.experts > 0 ? p.experts : 1) * chunks_per_block(per_expert(p));
}
std::vector<Chunk> chunks_of(const std::vector<ParamRef>& params) {
  std::vector<Chunk> out;
  for (size_t k = 0; k < params.size(); ++k) {
    const ParamRef& p = params[k];
    const int64_t per = per_expert(p), blocks = p.experts > 0 ? p.value->dim(0) : 1;
    const int64_t first = p.experts > 0 ? p.expert0 : 0, cpb = chunks_per_block(per);
    for (int64_t j = 0; j < blocks; ++j)
      for (int64_t b = 0, c = 0; b < per; b += kChunk, ++c)
        out.push_back({k, j * per + b, j * per + std::min(per, b + kChunk), (first + j) * cpb + c});
  }
  return out;
}
}  // namespace

AdamWConfig AdamWConfig::from_json(const nlohmann::json& j) {
  AdamWConfig c;
  config_read(j, "AdamWConfig", c);
  c.validate();
  return c;
}

void AdamWConfig::validate() const {
  check_fields(*this, "AdamWConfig");
  if (total_steps > 0 && warmup_steps > total_steps)
    throw ConfigError("AdamWConfig: warmup_steps: expected <= total_steps");
}

double learning_rate_at(const AdamWConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step <= c.warmup_steps)
    return c.learning_rate * static_cast<double>(step) / static_cast<double>(c.warmup_steps);
  if (c.total_steps <= 0) return c.learning_rate;
  if (step >= c.total_steps) return 0.0;
  return c.learning_rate * static_cast<double>(c.total_steps - step) /
         static_cast<double>(c.total_steps - c.warmup_steps);
}

double global_grad_norm(const std::vector<ParamRef>& params, Communicator* comm) {
  const std::vector<Chunk> chunks = chunks_of(params);
  std::vector<int64_t> at(params.size() + 1, 0);  // each parameter's first slot
  bool sharded = false;
  for (size_t k = 0; k < params.size(); ++k) {
    at[k + 1] = at[k] + slots_of(params[k]);
    sharded = sharded || params[k].sharded;
  }
  const bool share = sharded && comm && comm->size() > 1;
  std::vector<double> part(static_cast<size_t>(at.back()), 0.0);
  parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[static_cast<size_t>(c)];
    const ParamRef& p = params[ch.param];
    // Shared: every whole parameter's chunks come from rank 0 (all ranks hold the same), every
    // sharded one's from its holder; each slot then has one non-zero term and the sum is exact.
    if (share && !p.sharded && comm->rank() != 0) return;
    const float* g = p.grad->data();
    double s = 0;
    for (int64_t i = ch.begin; i < ch.end; ++i) s += static_cast<double>(g[i]) * g[i];
    part[static_cast<size_t>(at[ch.param] + ch.slot)] = s;
  });
  if (share) comm->allreduce_sum(part.data(), static_cast<int64_t>(part.size()));
  double total = 0;
  for (double s : part) total += s;  // in parameter, expert and chunk order
  return std::sqrt(total);
}

Tensor gather_experts(const ParamRef& p, const Tensor& local, Communicator& comm, int root) {
  check_arg(p.sharded && local.shape() == p.value->shape(),
            "gather_experts: '" + p.name + "' is not an expert-sharded parameter of this shape");
  const int P = comm.size(), me = comm.rank();
  const int64_t per = per_expert(p);
  int64_t mine[2] = {p.expert0, p.value->dim(0)};
  std::vector<int64_t> blocks(2 * static_cast<size_t>(P));
  comm.allgather(mine, sizeof mine, blocks.data());
  Tensor whole(me == root ? p.full_shape() : Shape{0});
  std::vector<float> scratch;
  for (int q = 0; q < P; ++q) {
    const int64_t first = blocks[2 * q], n = blocks[2 * q + 1] * per;
    if (n == 0) continue;
    float* dst = nullptr;
    if (me == root) {
      dst = whole.data() + first * per;
      if (q == root) std::copy_n(local.data(), n, dst);
    } else {
      scratch.resize(static_cast<size_t>(n));
      dst = scratch.data();
      if (q == me) std::copy_n(local.data(), n, dst);
    }
    if (q != root) comm.broadcast(dst, n * static_cast<int64_t>(sizeof(float)), q);
  }
  return whole;
}

Tensor take_experts(const ParamRef& p, const Tensor& whole) {
  check_arg(p.sharded && whole.shape() == p.full_shape(),
            "'" + p.name + "': expected the whole shape " + shape_str(p.full_shape()) + ", got " +
                shape_str(whole.shape()));
  const int64_t per = per_expert(p);
  Tensor out(p.value->shape());
  std::copy_n(whole.data() + p.expert0 * per, out.numel(), out.data());
  return out;
}

AdamW::AdamW(const AdamWConfig& config, const std::vector<ParamRef>& params, Communicator* comm)
    : config_(config), comm_(comm) {
  config_.validate();
  // Owners: parameter k goes to the rank whose equal share of all elements its first element
  // falls in, so each rank owns one run of consecutive parameters.
  // Expert-sharded parameters are not dealt: each rank keeps its own experts' moments.
  const int P = sharded() ? comm_->size() : 1;
  int64_t total = 0, at = 0;
  for (const auto& p : params)
    if (!p.sharded) total += p.value->numel();
  for (const auto& p : params) {
    check_arg(!p.sharded || sharded(),
              "AdamW: '" + p.name + "' is expert-sharded: give the optimizer its communicator");
    owner_.push_back(p.sharded ? kEveryRank : total > 0 ? static_cast<int>(at * P / total) : 0);
    if (!p.sharded) at += p.value->numel();
  }
  const int me = sharded() ? comm_->rank() : 0;
  refs_ = params;
  for (size_t k = 0; k < params.size(); ++k) {
    const ParamRef& p = params[k];
    const bool mine = owner_[k] == me || owner_[k] == kEveryRank;
    names_.push_back(p.name);
    shapes_.push_back(p.full_shape());
    m_.emplace_back(mine ? p.value->shape() : Shape{0});
    v_.emplace_back(mine ? p.value->shape() : Shape{0});
    decay_.push_back(
        std::none_of(config_.no_decay.begin(), config_.no_decay.end(),
                     [&](const std::string& s) { return p.name.find(s) != std::string::npos; }));
  }
}

double AdamW::step(const std::vector<ParamRef>& params) {
  check_arg(params.size() == names_.size(),
            "AdamW::step: expected the " + std::to_string(names_.size()) +
                " parameters given at construction, got " + std::to_string(params.size()));
  const double norm = global_grad_norm(params, comm_);
  const double clip =
      config_.clip_norm > 0 && norm > config_.clip_norm ? config_.clip_norm / norm : 1.0;
  ++step_;
  const double lr = learning_rate_at(config_, step_);
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double c1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double c2 = 1 - std::pow(b2, static_cast<double>(step_));
  const float step_size = static_cast<float>(lr / c1), inv_c2 = static_cast<float>(1 / c2);
  // 1 - beta in double: float(1 - 0.999f) would be off by 1.3e-5 relative.
  const float eps = static_cast<float>(config_.epsilon), fb1 = static_cast<float>(b1),
              fb2 = static_cast<float>(b2), ob1 = static_cast<float>(1 - b1),
              ob2 = static_cast<float>(1 - b2), fclip = static_cast<float>(clip);
  std::vector<float> keep(params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    check_arg(params[k].name == names_[k], "AdamW::step: parameter " + std::to_string(k) + " is '" +
                                               params[k].name + "', expected '" + names_[k] + "'");
    keep[k] = decay_[k] ? static_cast<float>(1 - lr * config_.weight_decay) : 1.f;
  }
  std::vector<Chunk> chunks = chunks_of(params);
  const int me = sharded() ? comm_->rank() : 0;
  std::erase_if(chunks, [&](const Chunk& ch) {
    return owner_[ch.param] != me && owner_[ch.param] != kEveryRank;
  });
  // Vectorised per SIMD level (ops/kernels.h): compiled for baseline x86-64, the loop ran
  // scalar square roots and divisions, 4% of the main job's training step (perf, AVX2 path).
  parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[static_cast<size_t>(c)];
    const size_t k = ch.param;
    const AdamWScalars s{fclip, fb1, ob1, fb2, ob2, keep[k], step_size, inv_c2, eps};
    adamw_update(params[k].value->data() + ch.begin, params[k].grad->data() + ch.begin,
                 m_[k].data() + ch.begin, v_[k].data() + ch.begin, ch.end - ch.begin, s);
  });
  if (sharded())  // every parameter from its owner, in order
    for (size_t k = 0; k < params.size(); ++k)
      if (owner_[k] != kEveryRank)
        comm_->broadcast(params[k].value->data(),
                         params[k].value->numel() * static_cast<int64_t>(sizeof(float)), owner_[k]);
  return norm;
}

std::vector<std::pair<std::string, const Tensor*>> AdamW::state() const {
  check_arg(!sharded(), "AdamW::state: the state is sharded over processes; use gather_state");
  std::vector<std::pair<std::string, const Tensor*>> s;
  for (size_t k = 0; k < names_.size(); ++k) {
    s.emplace_back("m/" + names_[k], &m_[k]);
    s.emplace_back("v/" + names_[k], &v_[k]);
  }
  return s;
}

std::vector<std::pair<std::string, Tensor>> AdamW::gather_state(int root) const {
  std::vector<std::pair<std::string, Tensor>> s;
  const int me = sharded() ? comm_->rank() : 0;
  for (size_t k = 0; k < names_.size(); ++k) {
    Tensor m = m_[k], v = v_[k];
    if (owner_[k] == kEveryRank) {  // each rank's experts in turn
      m = gather_experts(refs_[k], m_[k], *comm_, root);
      v = gather_experts(refs_[k], v_[k], *comm_, root);
    } else if (sharded() && owner_[k] != root) {
      if (me != owner_[k]) m = Tensor(shapes_[k]), v = Tensor(shapes_[k]);
      const int64_t bytes = m.numel() * static_cast<int64_t>(sizeof(float));
      // A fresh optimizer's moments are zeros everywhere: nothing to send.
      if (step_ > 0) {
        comm_->broadcast(m.data(), bytes, owner_[k]);
        comm_->broadcast(v.data(), bytes, owner_[k]);
      }
    }
    if (me != root) continue;
    s.emplace_back("m/" + names_[k], std::move(m));
    s.emplace_back("v/" + names_[k], std::move(v));
  }
  return s;
}

int64_t AdamW::state_bytes() const {
  int64_t n = 0;
  for (size_t k = 0; k < m_.size(); ++k) n += m_[k].numel() + v_[k].numel();
  return n * static_cast<int64_t>(sizeof(float));
}

void AdamW::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step) {
  for (size_t k = 0; k < names_.size(); ++k)
    for (const char* which : {"m/", "v/"}) {
      const std::string name = which + names_[k];
      auto it = std::find_if(tensors.begin(), tensors.end(),
                             [&](const auto& t) { return t.first == name; });
      if (it == tensors.end()) throw IoError("optimizer state: no tensor '" + name + "'");
      Tensor& dst = which[0] == 'm' ? m_[k] : v_[k];
      if (it->second.shape() != shapes_[k])
        throw IoError("optimizer state: '" + name + "' has shape " + shape_str(it->second.shape()) +
                      ", expected " + shape_str(shapes_[k]));
      if (owner_[k] == kEveryRank)
        dst = take_experts(refs_[k], it->second);  // this rank's experts
      else if (dst.numel() > 0 || it->second.numel() == 0)
        dst = it->second;  // this rank's own
    }
  step_ = step;
}

}  // namespace sparsemoe
