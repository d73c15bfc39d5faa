// The training configuration read by `sparsemoe train --config FILE`: the model (a preset name,
// a config file or an inline object), the data, the tokenizer, the two phases (masked-LM
// pretraining, then supersense classification fine-tuning) with their AdamW settings, and the
// cadence of logs, evaluations and checkpoints. Strict JSON: unknown keys are errors that name
// the key. The resolved config (model expanded, vocabulary size from the tokenizer) is what a run
// directory's config.json holds.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "sparsemoe/data/batching.h"
#include "sparsemoe/data/tokenizer.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/train/adamw.h"

namespace sparsemoe {

struct DataConfig {
  std::string format = "wordnet";  // "wordnet" (WordNet 3.0 glosses) or "tsv" (label<TAB>text)
  std::string path;                // wordnet: the dict directory ("" = /usr/share/wordnet)
  std::string pretrain_text;       // optional plain-text file for pretraining; "" = the
                                   // classification corpus's training texts
};

struct PhaseConfig {
  int64_t steps = 0;      // 0 skips the phase
  AdamWConfig optimizer;  // total_steps 0 means `steps` (linear decay to 0 at the phase's end)
};

struct TrainConfig {
  SparseMixerConfig model;  // vocab_size is taken from the trained tokenizer
  DataConfig data;
  TokenizerOptions tokenizer;
  MlmOptions mlm;
  PhaseConfig pretrain, finetune;
  int64_t batch_size = 32;
  double aux_loss_factor = 0.01;  // x sum of the MoE layers' load-balancing losses
  double z_loss_factor = 1e-4;    // x sum of their router z-losses
  double classifier_dropout = 0.1;
  int64_t log_every = 50;          // steps between metrics.jsonl records (and plain log lines)
  int64_t eval_every = 500;        // steps between dev evaluations (0: only at phase ends)
  int64_t eval_batches = 0;        // dev batches per evaluation (0: the whole dev split)
  int64_t checkpoint_every = 500;  // steps between checkpoints (0: only at phase ends)
  uint64_t seed = 0;

  int64_t total_steps() const { return pretrain.steps + finetune.steps; }
  // The optimizer of a phase with total_steps resolved.
  AdamWConfig optimizer_for(const PhaseConfig& phase) const;
  nlohmann::json to_json() const;
  // "model" may be a preset name, a model config file path or an object. An object without
  // vocab_size gets the tokenizer's. The router's loss weights are set from the two factors.
  static TrainConfig from_json(const nlohmann::json& j);
  void validate() const;
};

// Reads a training config file, applies "key=value" overrides (dotted paths; a string "model" is
// expanded to its object first so "model.num_experts=8" works) and parses it strictly.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& sets = {});

}  // namespace sparsemoe
