// Training configuration (see train_config.h).
#include "sparsemoe/train/train_config.h"

#include <filesystem>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/models/presets.h"

namespace sparsemoe {

namespace {

nlohmann::json parse_file(const std::string& path, const std::string& what) {
  return parse_json(read_file(path), what + " '" + path + "'");
}

// "model" as a preset name or file path -> its JSON object.
nlohmann::json expand_model(const nlohmann::json& model) {
  if (!model.is_string()) return model;
  const std::string name = model.get<std::string>();
  if (std::filesystem::is_regular_file(name)) return parse_file(name, "model config");
  return preset_json(name);
}

}  // namespace

AdamWConfig TrainConfig::optimizer_for(const PhaseConfig& phase) const {
  AdamWConfig c = phase.optimizer;
  if (c.total_steps == 0) c.total_steps = phase.steps;
  return c;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  reject_moved_keys(j, "TrainConfig",
                    {{"aux_loss_factor", "model.moe.router.load_balancing_loss_weight"},
                     {"z_loss_factor", "model.moe.router.router_z_loss_weight"}});
  TrainConfig c;
  nlohmann::json rest = j;
  nlohmann::json model = nlohmann::json::object();
  if (rest.is_object() && rest.contains("model")) {
    model = expand_model(rest["model"]);
    rest.erase("model");
  }
  config_read(rest, "TrainConfig", c);
  if (!model.is_object()) throw ConfigError("TrainConfig: key 'model' must be an object or name");
  if (!model.contains("vocab_size")) model["vocab_size"] = c.tokenizer.vocab_size;
  c.model = SparseMixerConfig::from_json(model);
  c.validate();
  return c;
}

void TrainConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("TrainConfig: " + m); };
  check_fields(*this, "TrainConfig");
  pretrain.optimizer.validate();
  finetune.optimizer.validate();
  if (data.format == "tsv" && data.path.empty()) bad("data.path: required for format 'tsv'");
  if (total_steps() == 0) bad("pretrain.steps + finetune.steps: expected > 0");
  if ((units & (units - 1)) != 0 || batch_size % units != 0)
    bad("units: expected a power of two dividing batch_size=" + std::to_string(batch_size) +
        ", got " + std::to_string(units));
  if (units > 1 && !model.moe_layers.empty()) {
    try {
      compute_grouping(batch_size / units, model.max_sequence_length, model.moe.examples_per_group);
    } catch (const std::exception& e) {
      bad("units: each unit of " + std::to_string(batch_size / units) +
          " sequences must hold whole MoE routing groups: " + e.what());
    }
    if (!model.moe.router.local_dispatch)
      bad("units: model.moe.router.local_dispatch=false gates the whole batch as one group, "
          "which cannot be split into units");
  }
  if (mlm.mask_token + mlm.random_token > 1)
    bad("mlm.mask_token, mlm.random_token: expected a sum <= 1");
  static_assert(Tokenizer::kNumSpecial + 2 == 7, "TokenizerOptions::vocab_size's rule");
  if (model.with_dense_inputs)
    bad("model.with_dense_inputs: training on text takes no dense inputs");
  if (model.output_range != 0) bad("model.output_range: must be 0 for masked-LM pretraining");
  for (const auto& [name, p] :
       {std::pair{"pretrain", &pretrain}, std::pair{"finetune", &finetune}}) {
    if (p->optimizer.total_steps != 0 && p->optimizer.total_steps < p->steps)
      bad(std::string(name) +
          ".optimizer.total_steps: expected 0 (the phase's steps) or >= the phase's steps");
    const AdamWConfig o = optimizer_for(*p);  // total_steps 0 becomes the phase's steps
    if (p->steps > 0 && o.warmup_steps > o.total_steps)
      bad(std::string(name) + ".optimizer.warmup_steps: expected <= the phase's " +
          std::to_string(o.total_steps) + " steps, got " + std::to_string(o.warmup_steps));
  }
}

nlohmann::json upgrade_run_config(nlohmann::json j) {
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) return j;
  nlohmann::json& m = j["model"];
  const bool old =
      m.contains("num_experts") || m.contains("router") || j.contains("aux_loss_factor");
  if (!old || m.contains("moe")) return j;
  nlohmann::json moe = nlohmann::json::object();
  if (m.contains("num_experts")) moe["experts"]["num_experts"] = m["num_experts"];
  for (const char* k : {"train_capacity_factor", "eval_capacity_factor", "examples_per_group",
                        "min_expert_capacity", "router"})
    if (m.contains(k)) moe[k] = m[k];
  for (const char* k : {"num_experts", "train_capacity_factor", "eval_capacity_factor",
                        "examples_per_group", "min_expert_capacity", "router"})
    m.erase(k);
  // The old training always set the routers' weights from its two factors (defaults 0.01, 1e-4).
  moe["router"]["load_balancing_loss_weight"] = j.value("aux_loss_factor", 0.01);
  moe["router"]["router_z_loss_weight"] = j.value("z_loss_factor", 1e-4);
  j.erase("aux_loss_factor");
  j.erase("z_loss_factor");
  m["moe"] = moe;
  return j;
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& sets) {
  nlohmann::json j = parse_file(path, "training config");
  if (!j.is_object()) throw ConfigError("training config '" + path + "': expected a JSON object");
  if (j.contains("model")) j["model"] = expand_model(j["model"]);
  for (const std::string& kv : sets) apply_override(j, kv);
  try {
    return TrainConfig::from_json(j);
  } catch (const ConfigError& e) {
    throw ConfigError("training config '" + path + "': " + e.what());
  }
}

}  // namespace sparsemoe
