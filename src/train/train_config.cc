// Training configuration (see train_config.h).
#include "sparsemoe/train/train_config.h"

#include <filesystem>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/models/presets.h"

namespace sparsemoe {

namespace {

nlohmann::json parse_file(const std::string& path, const std::string& what) {
  const std::string text = read_file(path);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) throw ConfigError(what + " '" + path + "': not valid JSON");
  return j;
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

nlohmann::json TrainConfig::to_json() const {
  return {
      {"model", model.to_json()},
      {"data",
       {{"format", data.format}, {"path", data.path}, {"pretrain_text", data.pretrain_text}}},
      {"tokenizer", {{"vocab_size", tokenizer.vocab_size}, {"model_type", tokenizer.model_type}}},
      {"mlm",
       {{"mask_rate", mlm.mask_rate},
        {"max_predictions", mlm.max_predictions},
        {"mask_token", mlm.mask_token},
        {"random_token", mlm.random_token}}},
      {"pretrain", {{"steps", pretrain.steps}, {"optimizer", pretrain.optimizer.to_json()}}},
      {"finetune", {{"steps", finetune.steps}, {"optimizer", finetune.optimizer.to_json()}}},
      {"batch_size", batch_size},
      {"aux_loss_factor", aux_loss_factor},
      {"z_loss_factor", z_loss_factor},
      {"classifier_dropout", classifier_dropout},
      {"log_every", log_every},
      {"eval_every", eval_every},
      {"eval_batches", eval_batches},
      {"checkpoint_every", checkpoint_every},
      {"seed", seed}};
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  TrainConfig c;
  JsonFields f(j, "TrainConfig");
  nlohmann::json model = nlohmann::json::object();
  if (j.contains("model")) {
    nlohmann::json m;
    f.read("model", m);
    model = expand_model(m);
  }
  if (const nlohmann::json* d = f.object("data")) {
    JsonFields g(*d, "TrainConfig.data");
    g.read("format", c.data.format);
    g.read("path", c.data.path);
    g.read("pretrain_text", c.data.pretrain_text);
    g.finish();
  }
  if (const nlohmann::json* t = f.object("tokenizer")) {
    JsonFields g(*t, "TrainConfig.tokenizer");
    g.read("vocab_size", c.tokenizer.vocab_size);
    g.read("model_type", c.tokenizer.model_type);
    g.finish();
  }
  if (const nlohmann::json* m = f.object("mlm")) {
    JsonFields g(*m, "TrainConfig.mlm");
    g.read("mask_rate", c.mlm.mask_rate);
    g.read("max_predictions", c.mlm.max_predictions);
    g.read("mask_token", c.mlm.mask_token);
    g.read("random_token", c.mlm.random_token);
    g.finish();
  }
  for (auto [key, phase] : {std::pair{"pretrain", &c.pretrain}, {"finetune", &c.finetune}}) {
    if (const nlohmann::json* p = f.object(key)) {
      JsonFields g(*p, std::string("TrainConfig.") + key);
      g.read("steps", phase->steps);
      if (const nlohmann::json* o = g.object("optimizer"))
        phase->optimizer = AdamWConfig::from_json(*o);
      g.finish();
    }
  }
  f.read("batch_size", c.batch_size);
  f.read("aux_loss_factor", c.aux_loss_factor);
  f.read("z_loss_factor", c.z_loss_factor);
  f.read("classifier_dropout", c.classifier_dropout);
  f.read("log_every", c.log_every);
  f.read("eval_every", c.eval_every);
  f.read("eval_batches", c.eval_batches);
  f.read("checkpoint_every", c.checkpoint_every);
  f.read("seed", c.seed);
  f.finish();
  if (!model.is_object()) throw ConfigError("TrainConfig: key 'model' must be an object or name");
  if (!model.contains("vocab_size")) model["vocab_size"] = c.tokenizer.vocab_size;
  c.model = SparseMixerConfig::from_json(model);
  c.model.router.load_balancing_loss_weight = c.aux_loss_factor;
  c.model.router.router_z_loss_weight = c.z_loss_factor;
  c.validate();
  return c;
}

void TrainConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("TrainConfig: " + m); };
  if (data.format != "wordnet" && data.format != "tsv")
    bad("data.format: expected 'wordnet' or 'tsv', got '" + data.format + "'");
  if (data.format == "tsv" && data.path.empty()) bad("data.path: required for format 'tsv'");
  if (pretrain.steps < 0 || finetune.steps < 0)
    bad("pretrain.steps, finetune.steps: expected >= 0");
  if (total_steps() == 0) bad("pretrain.steps + finetune.steps: expected > 0");
  if (batch_size < 1) bad("batch_size: expected >= 1, got " + std::to_string(batch_size));
  if (!(aux_loss_factor >= 0) || !(z_loss_factor >= 0))
    bad("aux_loss_factor, z_loss_factor: expected >= 0");
  if (!(classifier_dropout >= 0 && classifier_dropout < 1))
    bad("classifier_dropout: expected in [0, 1)");
  if (log_every < 1) bad("log_every: expected >= 1");
  if (eval_every < 0 || eval_batches < 0 || checkpoint_every < 0)
    bad("eval_every, eval_batches, checkpoint_every: expected >= 0");
  if (!(mlm.mask_rate > 0 && mlm.mask_rate <= 1)) bad("mlm.mask_rate: expected in (0, 1]");
  if (mlm.max_predictions < 0) bad("mlm.max_predictions: expected >= 0 (0: ceil(rate * L))");
  if (mlm.mask_token < 0 || mlm.random_token < 0 || mlm.mask_token + mlm.random_token > 1)
    bad("mlm.mask_token, mlm.random_token: expected >= 0 with a sum <= 1");
  if (tokenizer.vocab_size <= Tokenizer::kNumSpecial + 1)
    bad("tokenizer.vocab_size: expected > " + std::to_string(Tokenizer::kNumSpecial + 1));
  if (tokenizer.model_type != "unigram" && tokenizer.model_type != "bpe")
    bad("tokenizer.model_type: expected 'unigram' or 'bpe'");
  if (model.with_dense_inputs)
    bad("model.with_dense_inputs: training on text takes no dense inputs");
  if (model.output_range != 0) bad("model.output_range: must be 0 for masked-LM pretraining");
  for (const auto* p : {&pretrain, &finetune}) {
    if (p->optimizer.total_steps != 0 && p->optimizer.total_steps < p->steps)
      bad("optimizer.total_steps: expected 0 (the phase's steps) or >= the phase's steps");
  }
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
