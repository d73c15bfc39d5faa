// AdamW, its schedule and global-norm clipping (see adamw.h).
#include "sparsemoe/train/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/io/file_io.h"

namespace sparsemoe {

namespace {
constexpr int64_t kChunk = 1 << 14;  // fixed reduction chunks: thread-count independent sums

// Every parameter's chunks as one list, so that a step opens one parallel region, not one per
// parameter (a small network has dozens of parameters and a step of a few milliseconds).
struct Chunk {
  size_t param;
  int64_t begin, end;
};
std::vector<Chunk> chunks_of(const std::vector<ParamRef>& params) {
  std::vector<Chunk> out;
  for (size_t k = 0; k < params.size(); ++k)
    for (int64_t b = 0, n = params[k].grad->numel(); b < n; b += kChunk)
      out.push_back({k, b, std::min(n, b + kChunk)});
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

double global_grad_norm(const std::vector<ParamRef>& params) {
  const std::vector<Chunk> chunks = chunks_of(params);
  std::vector<double> part(chunks.size());
  parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[static_cast<size_t>(c)];
    const float* g = params[ch.param].grad->data();
    double s = 0;
    for (int64_t i = ch.begin; i < ch.end; ++i) s += static_cast<double>(g[i]) * g[i];
    part[static_cast<size_t>(c)] = s;
  });
  double total = 0;
  for (double s : part) total += s;  // in parameter and chunk order
  return std::sqrt(total);
}

AdamW::AdamW(const AdamWConfig& config, const std::vector<ParamRef>& params, Communicator* comm)
    : config_(config), comm_(comm) {
  config_.validate();
  // Owners: parameter k goes to the rank whose equal share of all elements its first element
  // falls in, so each rank owns one run of consecutive parameters.
  const int P = sharded() ? comm_->size() : 1;
  int64_t total = 0, at = 0;
  for (const auto& p : params) total += p.value->numel();
  for (const auto& p : params) {
    owner_.push_back(total > 0 ? static_cast<int>(at * P / total) : 0);
    at += p.value->numel();
  }
  const int me = sharded() ? comm_->rank() : 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const ParamRef& p = params[k];
    names_.push_back(p.name);
    shapes_.push_back(p.value->shape());
    m_.emplace_back(owner_[k] == me ? p.value->shape() : Shape{0});
    v_.emplace_back(owner_[k] == me ? p.value->shape() : Shape{0});
    decay_.push_back(
        std::none_of(config_.no_decay.begin(), config_.no_decay.end(),
                     [&](const std::string& s) { return p.name.find(s) != std::string::npos; }));
  }
}

double AdamW::step(const std::vector<ParamRef>& params) {
  check_arg(params.size() == names_.size(),
            "AdamW::step: expected the " + std::to_string(names_.size()) +
                " parameters given at construction, got " + std::to_string(params.size()));
  const double norm = global_grad_norm(params);
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
  std::erase_if(chunks, [&](const Chunk& ch) { return owner_[ch.param] != me; });
  parallel_for(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const Chunk& ch = chunks[static_cast<size_t>(c)];
    const size_t k = ch.param;
    float* w = params[k].value->data();
    const float* g = params[k].grad->data();
    float* m = m_[k].data();
    float* v = v_[k].data();
    const float kp = keep[k];
    for (int64_t i = ch.begin; i < ch.end; ++i) {
      const float gi = g[i] * fclip;
      m[i] = fb1 * m[i] + ob1 * gi;
      v[i] = fb2 * v[i] + ob2 * gi * gi;
      w[i] = w[i] * kp - step_size * m[i] / (std::sqrt(v[i] * inv_c2) + eps);
    }
  });
  if (sharded())  // every parameter from its owner, in order
    for (size_t k = 0; k < params.size(); ++k)
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
    if (sharded() && owner_[k] != root) {
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
      if (dst.numel() > 0 || it->second.numel() == 0) dst = it->second;  // this rank's own
    }
  step_ = step;
}

}  // namespace sparsemoe
