// A run's checkpoint: one safetensors file holding the task model's weights under their
// all_params() names, the current phase's AdamW moments ("optimizer/m/...", "optimizer/v/...")
// and the training state in its metadata. One file written atomically means a crash leaves either
// the previous checkpoint or the new one, never a mix. The RNG needs no saved stream: every random
// draw is a pure function of (seed, step), so the seed and the step are its state.
#pragma once

#include <cstdint>
#include <string>

#include "sparsemoe/io/safetensors.h"
#include "sparsemoe/train/adamw.h"
#include "sparsemoe/train/task_model.h"

namespace sparsemoe {

struct CheckpointState {
  int64_t step = 0;   // training steps completed (both phases counted)
  std::string phase;  // "pretrain" or "finetune": whose optimizer state is saved
  int64_t optimizer_step = 0;
  uint64_t seed = 0;        // the RNG state with `step`
  std::string config_hash;  // FNV-1a of config.json: resuming another config is refused
};

inline constexpr const char* kCheckpointFormat = "sparsemoe.checkpoint.v1";

void save_checkpoint(const std::string& path, TaskModel& model, const AdamW* optimizer,
                     const CheckpointState& state);
// The same with the optimizer's moments given as named tensors (AdamW::gather_state's).
void save_checkpoint(const std::string& path, TaskModel& model,
                     const std::vector<std::pair<std::string, const Tensor*>>& optimizer_state,
                     const CheckpointState& state);
// The same with the weights given as named tensors too (expert-sharded ones gathered whole).
void save_checkpoint(const std::string& path,
                     const std::vector<std::pair<std::string, const Tensor*>>& weights,
                     const std::vector<std::pair<std::string, const Tensor*>>& optimizer_state,
                     const CheckpointState& state);
// Loads the weights into `model` and, when `optimizer` is given, its state (an expert-sharded
// parameter takes its own experts from the whole tensor). Throws IoError naming
// the file and the problem: not a checkpoint, a missing or extra tensor, a shape mismatch.
CheckpointState load_checkpoint(const std::string& path, TaskModel& model, AdamW* optimizer);
// Just the metadata (validated), without building a model.
CheckpointState read_checkpoint_state(const std::string& path);
// The same two on a decoded file (the fuzzers call these; errors name f.path).
CheckpointState checkpoint_state(const SafetensorsFile& f);
CheckpointState load_checkpoint(const SafetensorsFile& f, TaskModel& model, AdamW* optimizer);

}  // namespace sparsemoe
