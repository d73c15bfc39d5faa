// The training loop behind `sparsemoe train`: a run directory (config.json, tokenizer.model,
// checkpoint.safetensors, metrics.jsonl, report.html, results.json), masked-LM pretraining then
// classification fine-tuning, dev evaluation, progress output, checkpoints, bitwise-exact resume,
// clean stops on a signal and a clear stop on a non-finite loss.
//
// Determinism: the data order (a permutation per epoch), the MLM corruption, dropout and router
// jitter are pure functions of (seed, step), and every kernel is thread-count independent, so a
// run resumed from a checkpoint at step N continues bitwise as if it had never stopped. With
// `units` > 1 a step runs its units one after the other and adds their gradients as a fixed tree
// (train/data_parallel.h); P processes share the units and train to the same bits as one.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "sparsemoe/data/tokenizer.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/train/adamw.h"
#include "sparsemoe/train/data_parallel.h"
#include "sparsemoe/train/task_model.h"
#include "sparsemoe/train/train_config.h"

namespace sparsemoe {

// The loss became NaN or infinite; the message names the step and the checkpoint kept.
class NonFiniteLoss : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TrainOptions {
  int64_t stop_after_step = 0;  // > 0: checkpoint and stop once this many steps are done
  const std::atomic<int>* stop_signal = nullptr;  // nonzero: checkpoint and stop after this step
  std::ostream* log = nullptr;                    // progress output; null: silent
  bool live = false;  // one self-updating line (for a terminal) instead of plain lines
  const Tokenizer* tokenizer = nullptr;  // a new run uses this one instead of training its own
  // With `tokenizer`: a new run on one process uses this data (prepared from the same data config
  // with that tokenizer, e.g. another Trainer's data()) instead of reading and tokenizing the
  // corpus again; --compare-dense shares the MoE run's between its runs.
  const TaskData* data = nullptr;
  // The processes training together (null: this one alone). Rank 0 owns the run directory: it
  // writes every file and the progress output; the others read nothing from it (they get the
  // config, tokenizer and checkpoint from rank 0) except the corpus, which each reads itself.
  Communicator* comm = nullptr;
  // Called on rank 0 with each record as it is appended to metrics.jsonl (training windows,
  // evaluations): the Python package's progress callback. It may set *stop_signal to stop.
  std::function<void(const nlohmann::json&)> on_record = nullptr;
};

// kAlreadyFinished: --resume of a run that had finished; nothing was run or written.
enum class TrainOutcome { kFinished, kStopped, kInterrupted, kAlreadyFinished };

struct TrainResult {
  TrainOutcome outcome = TrainOutcome::kFinished;
  int64_t step = 0;
  double seconds = 0;  // wall time of this invocation's training steps and evaluations
  double phase_seconds[2] = {0, 0};  // of which pretraining, fine-tuning (steps and dev evals)
  double step_seconds[2] = {0, 0};   // of which the training steps alone
  EvalResult test;                   // when finished: the test split
  double majority_accuracy = 0;      // test accuracy of always predicting the majority class
};

// A trained (or training) run read back for use: its config, tokenizer, label names and the
// model with the checkpoint's weights. Throws IoError naming a missing or corrupt file.
struct LoadedRun {
  TrainConfig config;
  Tokenizer tokenizer;
  std::vector<std::string> labels;
  std::unique_ptr<TaskModel> model;
  int64_t step = 0;
};
LoadedRun load_run(const std::string& run_dir);
// A run directory's config.json (strict, old formats upgraded) and labels.json, from their text;
// errors are IoError naming path. load_run and the fuzzers use them.
TrainConfig parse_run_config(const std::string& text, const std::string& path);
std::vector<std::string> parse_run_labels(const std::string& text, const std::string& path);

// The peak memory of training with config (bytes, an estimate in double: weights, gradients and
// the two AdamW moments, the saved activations of one batch, the masked-LM logits).
// On `procs` processes (the optimizer's moments are sharded over them), per process.
double estimate_training_memory(const TrainConfig& config, int procs = 1);

class Trainer {
 public:
  // A new run: creates run_dir (which must not already hold a checkpoint), trains the tokenizer
  // and writes config.json, tokenizer.model and the step-0 checkpoint. A directory whose run
  // never reached its first checkpoint (killed while preparing) is started again.
  //
  // Either way the run directory is locked (run_dir/.lock, flock) for the Trainer's lifetime: a
  // second Trainer on it throws IoError naming the holder's pid. The lock, the config and an
  // estimate of the run's peak memory are checked before any data is read or file written.
  Trainer(const TrainConfig& config, const std::string& run_dir, TrainOptions options);
  ~Trainer();
  // Continues the run in run_dir from its checkpoint, with the run's own config (a run without
  // one starts again from its config.json).
  static std::unique_ptr<Trainer> resume(const std::string& run_dir, TrainOptions options);

  TrainResult run();

  const TrainConfig& config() const { return config_; }
  const TaskData& data() const { return data_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  TaskModel& model() { return *model_; }
  int64_t step() const { return step_; }

 private:
  Trainer(const std::string& run_dir, TrainOptions options);  // resume
  void prepare(bool fresh);
  // Rank 0: the run directory, as one process does (`loaded`: the corpus, when already read).
  void prepare_directory(bool fresh, const Corpus* loaded);
  // Rank 0's run to the other ranks; `together` agrees on their failures.
  void share_run(const Corpus* corpus,
                 const std::function<void(const std::function<void()>&)>& together);
  void take_run(const std::string& config_text, const std::string& tokenizer_bytes,
                const std::string& checkpoint_bytes, const Corpus* corpus);
  void report_processes();  // per-process memory, from rank 0 (collective)
  bool lead() const { return comm_->rank() == 0; }
  // Builds the task model; on several processes with expert_parallel, each MoE layer's experts
  // are split over them, storage included (every rank holds its own experts only).
  void build_model();
  bool in_pretrain(int64_t step) const { return step < config_.pretrain.steps; }
  void enter_phase(bool pretrain);
  void train_step();
  void save();
  void evaluate_dev();
  void log_window(bool force);
  void write_record(const nlohmann::json& j);
  std::string path(const std::string& name) const;

  TrainConfig config_;
  std::string run_dir_;
  std::unique_ptr<FileLock> lock_;  // held for the Trainer's lifetime
  TrainOptions options_;
  Communicator* comm_ = nullptr;
  std::string config_hash_;
  bool save_initial_ = false;  // a fresh start: the step-0 checkpoint is written once all ranks
                               // hold the model (collective: sharded experts come to rank 0)
  Tokenizer tokenizer_;
  TaskData data_;
  std::unique_ptr<TaskModel> model_;
  std::unique_ptr<AdamW> optimizer_;
  bool optimizer_pretrain_ = true;
  std::vector<ParamRef> params_;  // the current phase's parameters, in the optimizer's order
  // Step workspaces, reused across steps.
  Batch batch_, unit_batch_;
  GradientTree tree_;
  Tensor logits_, dlogits_, dseq_, dpooled_;
  int64_t step_ = 0;
  struct Window;
  std::unique_ptr<Window> window_;
  struct Order;
  std::unique_ptr<Order> order_;
};

}  // namespace sparsemoe
