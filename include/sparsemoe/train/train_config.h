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
  template <class V>
  void fields(V& v) {
    v("format", format, "wordnet (WordNet 3.0 glosses) or tsv (label<TAB>text)",
      one_of({"wordnet", "tsv"}));
    v("path", path, "wordnet: the dict directory (\"\": /usr/share/wordnet); tsv: the file");
    v("pretrain_text", pretrain_text, "plain text for pretraining (\"\": the training texts)");
  }
};

struct PhaseConfig {
  int64_t steps = 0;      // 0 skips the phase
  AdamWConfig optimizer;  // total_steps 0 means `steps` (linear decay to 0 at the phase's end)

  template <class V>
  void fields(V& v) {
    v("steps", steps, "optimizer steps (0 skips the phase)", at_least(0));
    v("optimizer", optimizer, "AdamW and its schedule");
  }
};

struct TrainConfig {
  SparseMixerConfig model;  // vocab_size is taken from the trained tokenizer
  DataConfig data;
  TokenizerOptions tokenizer;
  MlmOptions mlm;
  PhaseConfig pretrain, finetune;
  int64_t batch_size = 32;
  // Data-parallel units: a step's batch is cut into this many equal runs of sequences, each run
  // forward and backward on its own, and their gradients added as one fixed pairwise tree. Any
  // process count that divides it (a power of two) trains to the same bits (docs/distributed.md).
  int64_t units = 1;
  // On several processes: each MoE layer's experts are split over them (expert parallelism: their
  // compute, weights, gradients and optimizer state); false runs and holds every expert on every
  // rank (data parallelism only). The same bits either way.
  bool expert_parallel = true;
  double classifier_dropout = 0.1;
  int64_t log_every = 50;          // steps between metrics.jsonl records (and plain log lines)
  int64_t eval_every = 500;        // steps between dev evaluations (0: only at phase ends)
  int64_t eval_batches = 0;        // dev batches per evaluation (0: the whole dev split)
  int64_t checkpoint_every = 500;  // steps between checkpoints (0: only at phase ends)
  uint64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v("model", model, "the network: a preset name, a config file or an object");
    v("data", data, "the corpus");
    v("tokenizer", tokenizer, "the tokenizer trained on it");
    v("mlm", mlm, "masked-LM corruption in pretraining");
    v("pretrain", pretrain, "phase 1: masked-LM pretraining");
    v("finetune", finetune, "phase 2: classification fine-tuning");
    v("batch_size", batch_size, "sequences per step", at_least(1));
    v("units", units,
      "data-parallel units per step (a power of two dividing batch_size; processes must divide "
      "it)",
      at_least(1));
    v("expert_parallel", expert_parallel,
      "on several processes, split each MoE layer's experts (compute and storage) over them (same "
      "results either way)");
    v("classifier_dropout", classifier_dropout, "dropout before the classifier",
      in_half_open(0, 1));
    v("log_every", log_every, "steps between metrics.jsonl records", at_least(1));
    v("eval_every", eval_every, "steps between dev evaluations (0: at phase ends)", at_least(0));
    v("eval_batches", eval_batches, "dev batches per evaluation (0: all)", at_least(0));
    v("checkpoint_every", checkpoint_every, "steps between checkpoints (0: at phase ends)",
      at_least(0));
    v("seed", seed, "initialisation, data order, dropout");
  }
  int64_t total_steps() const { return pretrain.steps + finetune.steps; }
  // The optimizer of a phase with total_steps resolved.
  AdamWConfig optimizer_for(const PhaseConfig& phase) const;
  nlohmann::json to_json() const { return config_to_json(*this); }
  // "model" may be a preset name, a model config file path or an object. An object without
  // vocab_size gets the tokenizer's.
  static TrainConfig from_json(const nlohmann::json& j);
  void validate() const;
};

// A run directory's config.json as an older sparsemoe wrote it (before issue 11 nested the MoE
// keys): model.num_experts, the capacity factors, examples_per_group, min_expert_capacity and
// router move into model.moe, and the training's aux_loss_factor / z_loss_factor become the
// router's loss weights, which they used to overwrite. Runs read their config.json through this,
// so an existing run can still be resumed, evaluated and inspected; a config a user writes gets
// no such help: its old keys are errors naming the new place.
nlohmann::json upgrade_run_config(nlohmann::json j);

// Reads a training config file, applies "key=value" overrides (dotted paths; a string "model" is
// expanded to its object first so "model.num_experts=8" works) and parses it strictly.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& sets = {});

}  // namespace sparsemoe
