// Checkpoint save and load (see checkpoint.h).
#include "sparsemoe/train/checkpoint.h"

#include <limits>
#include <map>
#include <utility>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/io/safetensors.h"

namespace sparsemoe {

namespace {

// A metadata value as a non-negative integer up to max (a missing key is `fallback` when given).
uint64_t parse_uint(const std::map<std::string, std::string>& meta, const std::string& key,
                    const std::string& path, uint64_t max, const char* fallback = nullptr) {
  const auto it = meta.find(key);
  if (it == meta.end() && !fallback)
    throw IoError("checkpoint '" + path + "': no '" + key + "' in its metadata");
  const std::string text = it == meta.end() ? fallback : it->second;
  uint64_t v = 0;
  bool ok = !text.empty() && text.size() <= 20;
  for (char c : text) {
    ok = ok && c >= '0' && c <= '9' && !__builtin_mul_overflow(v, 10, &v) &&
         !__builtin_add_overflow(v, static_cast<uint64_t>(c - '0'), &v);
  }
  if (!ok || v > max)
    throw IoError("checkpoint '" + path + "': metadata '" + key + "' must be an integer in [0, " +
                  std::to_string(max) + "], got '" + text + "'");
  return v;
}
constexpr uint64_t kMaxStep = std::numeric_limits<int64_t>::max();

}  // namespace

CheckpointState checkpoint_state(const SafetensorsFile& f) {
  const auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kCheckpointFormat)
    throw IoError("'" + f.path + "' is not a sparsemoe checkpoint (metadata format must be '" +
                  kCheckpointFormat + "')");
  CheckpointState s;
  s.step = static_cast<int64_t>(parse_uint(f.metadata, "step", f.path, kMaxStep));
  s.optimizer_step =
      static_cast<int64_t>(parse_uint(f.metadata, "optimizer_step", f.path, kMaxStep));
  s.seed = parse_uint(f.metadata, "seed", f.path, std::numeric_limits<uint64_t>::max(), "0");
  const auto phase = f.metadata.find("phase");
  if (phase == f.metadata.end() || (phase->second != "pretrain" && phase->second != "finetune"))
    throw IoError("checkpoint '" + f.path + "': metadata 'phase' must be pretrain or finetune");
  s.phase = phase->second;
  const auto hash = f.metadata.find("config_hash");
  if (hash != f.metadata.end()) s.config_hash = hash->second;
  return s;
}

void save_checkpoint(const std::string& path, TaskModel& model, const AdamW* optimizer,
                     const CheckpointState& state) {
  save_checkpoint(
      path, model,
      optimizer ? optimizer->state() : std::vector<std::pair<std::string, const Tensor*>>{}, state);
}

void save_checkpoint(const std::string& path, TaskModel& model,
                     const std::vector<std::pair<std::string, const Tensor*>>& optimizer_state,
                     const CheckpointState& state) {
  std::vector<std::pair<std::string, const Tensor*>> weights;
  for (const ParamRef& p : model.all_params()) {
    check_arg(!p.sharded, "save_checkpoint: '" + p.name +
                              "' is expert-sharded: gather it first (gather_experts)");
    weights.emplace_back(p.name, p.value);
  }
  save_checkpoint(path, weights, optimizer_state, state);
}

void save_checkpoint(const std::string& path,
                     const std::vector<std::pair<std::string, const Tensor*>>& weights,
                     const std::vector<std::pair<std::string, const Tensor*>>& optimizer_state,
                     const CheckpointState& state) {
  std::vector<std::pair<std::string, const Tensor*>> tensors = weights;
  for (const auto& [name, t] : optimizer_state) tensors.emplace_back("optimizer/" + name, t);
  const std::map<std::string, std::string> meta = {
      {"format", kCheckpointFormat},
      {"step", std::to_string(state.step)},
      {"phase", state.phase},
      {"optimizer_step", std::to_string(state.optimizer_step)},
      {"seed", std::to_string(state.seed)},
      {"rng", "counter-based: every draw is a function of (seed, step)"},
      {"config_hash", state.config_hash}};
  save_safetensors(path, tensors, meta);
}

CheckpointState read_checkpoint_state(const std::string& path) {
  return checkpoint_state(load_safetensors(path));
}

CheckpointState load_checkpoint(const std::string& path, TaskModel& model, AdamW* optimizer) {
  return load_checkpoint(load_safetensors(path), model, optimizer);
}

CheckpointState load_checkpoint(const SafetensorsFile& f, TaskModel& model, AdamW* optimizer) {
  const std::string& path = f.path;
  const CheckpointState s = checkpoint_state(f);
  std::map<std::string, const Tensor*> by_name;
  std::vector<std::pair<std::string, Tensor>> opt_state;
  for (const auto& [name, t] : f.tensors) {
    if (name.rfind("optimizer/", 0) == 0) {
      opt_state.emplace_back(name.substr(10), t);
    } else {
      by_name[name] = &t;
    }
  }
  for (const ParamRef& p : model.all_params()) {
    const auto it = by_name.find(p.name);
    if (it == by_name.end())
      throw IoError("checkpoint '" + path + "': no tensor '" + p.name + "' (the model has it)");
    if (it->second->shape() != p.full_shape())
      throw IoError("checkpoint '" + path + "': '" + p.name + "' has shape " +
                    shape_str(it->second->shape()) + ", the model expects " +
                    shape_str(p.full_shape()));
    // An expert-sharded parameter takes the experts this process holds.
    *p.value = p.sharded ? take_experts(p, *it->second) : *it->second;
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw IoError("checkpoint '" + path + "': tensor '" + by_name.begin()->first +
                  "' is not a parameter of the configured model");
  if (optimizer) {
    try {
      optimizer->load_state(opt_state, s.optimizer_step);
    } catch (const IoError& e) {
      throw IoError("checkpoint '" + path + "': " + e.what());
    }
  }
  return s;
}

}  // namespace sparsemoe
