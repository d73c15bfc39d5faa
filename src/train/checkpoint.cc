// Checkpoint save and load (see checkpoint.h).
#include "sparsemoe/train/checkpoint.h"

#include <map>
#include <utility>
#include <vector>

#include "sparsemoe/io/file_io.h"
#include "sparsemoe/io/safetensors.h"

namespace sparsemoe {

namespace {

int64_t parse_int(const std::map<std::string, std::string>& meta, const std::string& key,
                  const std::string& path) {
  const auto it = meta.find(key);
  if (it == meta.end())
    throw IoError("checkpoint '" + path + "': no '" + key + "' in its metadata");
  try {
    size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    if (used == it->second.size() && v >= 0) return v;
  } catch (const std::exception&) {
  }
  throw IoError("checkpoint '" + path + "': metadata '" + key +
                "' must be a non-negative "
                "integer, got '" +
                it->second + "'");
}

CheckpointState state_from(const SafetensorsFile& f) {
  const auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != kCheckpointFormat)
    throw IoError("'" + f.path + "' is not a sparsemoe checkpoint (metadata format must be '" +
                  kCheckpointFormat + "')");
  CheckpointState s;
  s.step = parse_int(f.metadata, "step", f.path);
  s.optimizer_step = parse_int(f.metadata, "optimizer_step", f.path);
  s.seed =
      static_cast<uint64_t>(std::stoull(f.metadata.count("seed") ? f.metadata.at("seed") : "0"));
  const auto phase = f.metadata.find("phase");
  if (phase == f.metadata.end() || (phase->second != "pretrain" && phase->second != "finetune"))
    throw IoError("checkpoint '" + f.path + "': metadata 'phase' must be pretrain or finetune");
  s.phase = phase->second;
  const auto hash = f.metadata.find("config_hash");
  if (hash != f.metadata.end()) s.config_hash = hash->second;
  return s;
}

}  // namespace

void save_checkpoint(const std::string& path, TaskModel& model, const AdamW* optimizer,
                     const CheckpointState& state) {
  std::vector<std::pair<std::string, const Tensor*>> tensors;
  for (const ParamRef& p : model.all_params()) tensors.emplace_back(p.name, p.value);
  if (optimizer) {
    for (const auto& [name, t] : optimizer->state()) tensors.emplace_back("optimizer/" + name, t);
  }
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
  return state_from(load_safetensors(path));
}

CheckpointState load_checkpoint(const std::string& path, TaskModel& model, AdamW* optimizer) {
  const SafetensorsFile f = load_safetensors(path);
  const CheckpointState s = state_from(f);
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
    if (it->second->shape() != p.value->shape())
      throw IoError("checkpoint '" + path + "': '" + p.name + "' has shape " +
                    shape_str(it->second->shape()) + ", the model expects " +
                    shape_str(p.value->shape()));
    *p.value = *it->second;
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
