// `sparsemoe train`: trains a Sparse Mixer as a training config says (masked-LM pretraining, then
// fine-tuning), into a run directory; `--resume` continues a run bitwise. SIGINT and SIGTERM
// save a checkpoint and exit with 128 + the signal; a non-finite loss exits with status 1 and the
// last good checkpoint kept; bad configs and arguments exit with status 2. `--compare-dense` adds
// the main job's baseline: the same network without MoE layers, trained for the same time.
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/train/trainer.h"

namespace sparsemoe::cli {

namespace {

std::atomic<int> g_signal{0};
// Set while the Trainer prepares (corpus, tokenizer training): nothing of value is written yet
// and SentencePiece cannot be interrupted, so a signal then exits at once. A run stopped there
// is started again by the next `train` or `train --resume` on the directory.
std::atomic<bool> g_preparing{false};

extern "C" void on_stop_signal(int sig) {
  if (g_preparing.load()) {
    constexpr char msg[] = "\nsparsemoe: interrupted while preparing the run; nothing to keep\n";
    [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    ::_exit(128 + sig);
  }
  g_signal.store(sig);
  std::signal(sig, SIG_DFL);  // a second signal stops at once
}

struct TrainArgs {
  std::string config, out;
  std::vector<std::string> sets;
  bool resume = false;
  int64_t stop_after = 0;
  int threads = 0;
  bool quiet = false;
  bool compare_dense = false;
};

// Seconds per training step of `base` in one phase, measured in scratch runs: the time of
// kWarm + kSteps steps less that of kWarm steps, so that the first steps' allocations and page
// faults do not count, over enough steps (a few seconds for the main job) that a pause of a noisy
// machine moves the estimate less (30 steps gave -20% to +25% on a 2-vCPU VM).
double seconds_per_step(const TrainConfig& base, bool pretrain, const Tokenizer& tok,
                        const TaskData& data, const std::string& dir) {
  constexpr int64_t kWarm = 20, kSteps = 200;
  auto timed = [&](int64_t steps) {
    TrainConfig c = base;
    c.pretrain.steps = pretrain ? 1000000 : 0;
    c.finetune.steps = pretrain ? 0 : 1000000;
    c.eval_every = 0;
    c.checkpoint_every = 0;
    TrainOptions o;
    o.tokenizer = &tok;
    o.data = &data;  // not prepared again (about 1 s each, and there are eight of these runs)
    o.stop_after_step = steps;
    o.stop_signal = &g_signal;
    const TrainResult r = Trainer(c, dir, o).run();
    std::filesystem::remove_all(dir);
    if (r.outcome == TrainOutcome::kInterrupted) throw InvalidArgument("interrupted");
    return r.step_seconds[pretrain ? 0 : 1];
  };
  const double warm = timed(kWarm), all = timed(kWarm + kSteps);
  return all > warm ? (all - warm) / kSteps : all / (kWarm + kSteps);
}

// The baseline of the main job: the same network with dense feed-forward blocks where the MoE
// layers were, trained for the MoE run's training-step time per phase. Its step count is the MoE
// phase's times the ratio of the two models' step times, both measured the same way, one after
// the other: dividing the MoE run's measured seconds by the dense step time alone mixed two kinds
// of measurement, and on a noisy 2-vCPU VM the dense phase came out 6-23% longer or 12-28%
// shorter than the MoE one (docs/performance.md). Prints the three accuracies; writes
// comparison.json.
int compare_dense(const TrainArgs& a, Trainer& moe, const TrainResult& moe_result,
                  const TrainOptions& opt) {
  TrainConfig dense = moe.config();
  dense.model.moe_layers.clear();
  const std::string dense_dir = (std::filesystem::path(a.out) / "dense").string();
  if (opt.log) *opt.log << "dense baseline: timing its steps\n";
  int64_t steps[2] = {0, 0};
  PhaseConfig* phases[2] = {&dense.pretrain, &dense.finetune};
  for (int p = 0; p < 2; ++p) {
    if (phases[p]->steps == 0) continue;
    const double t_moe =
        seconds_per_step(moe.config(), p == 0, moe.tokenizer(), moe.data(), dense_dir + ".timing");
    const double t =
        seconds_per_step(dense, p == 0, moe.tokenizer(), moe.data(), dense_dir + ".timing");
    steps[p] =
        std::max<int64_t>(1, std::llround(static_cast<double>(phases[p]->steps) * t_moe / t));
    if (opt.log)
      *opt.log << fmt::format("dense baseline: {} step {:.2f} ms (MoE {:.2f} ms)\n",
                              p == 0 ? "pretraining" : "fine-tuning", t * 1e3, t_moe * 1e3);
    const double scale = static_cast<double>(steps[p]) / static_cast<double>(phases[p]->steps);
    phases[p]->optimizer.warmup_steps =
        std::llround(static_cast<double>(phases[p]->optimizer.warmup_steps) * scale);
    phases[p]->optimizer.total_steps = 0;  // the new step count
    phases[p]->steps = steps[p];
  }
  if (opt.log)
    *opt.log << fmt::format("dense baseline: {} pretraining + {} fine-tuning steps in {}\n",
                            steps[0], steps[1], dense_dir);
  TrainOptions dopt = opt;
  dopt.tokenizer = &moe.tokenizer();
  dopt.data = &moe.data();
  Trainer trainer(dense, dense_dir, dopt);
  const TrainResult d = trainer.run();
  if (d.outcome == TrainOutcome::kInterrupted) {
    std::cerr << fmt::format(
        "dense baseline interrupted at step {}; continue it with: sparsemoe "
        "train --resume --out {}\n",
        d.step, dense_dir);
    return 128 + g_signal.load();
  }
  const TaskData& data = moe.data();
  const std::string majority = data.label_names[data.majority_label];
  std::cout << fmt::format(
      "\ntest accuracy on {} examples of {}:\n"
      "  sparse mixer (MoE)                   {:.4f}   {} steps, {:.0f} s of training steps\n"
      "  dense, same shape, same time         {:.4f}   {} steps, {:.0f} s of training steps\n"
      "  majority class ('{}')  {:.4f}\n",
      moe_result.test.count, data.corpus_name, moe_result.test.accuracy, moe_result.step,
      moe_result.step_seconds[0] + moe_result.step_seconds[1], d.test.accuracy, d.step,
      d.step_seconds[0] + d.step_seconds[1], majority, moe_result.majority_accuracy);
  const nlohmann::json j = {
      {"test_examples", moe_result.test.count},
      {"moe",
       {{"test_accuracy", moe_result.test.accuracy},
        {"test_loss", moe_result.test.loss},
        {"steps", moe_result.step},
        {"step_seconds", moe_result.step_seconds},
        {"seconds", moe_result.seconds}}},
      {"dense",
       {{"test_accuracy", d.test.accuracy},
        {"test_loss", d.test.loss},
        {"steps", d.step},
        {"step_seconds", d.step_seconds},
        {"seconds", d.seconds},
        {"run", dense_dir}}},
      {"majority", {{"class", majority}, {"test_accuracy", moe_result.majority_accuracy}}}};
  write_file_atomic((std::filesystem::path(a.out) / "comparison.json").string(), j.dump(2) + "\n");
  return 0;
}

int run_train(const TrainArgs& a) {
  check_arg(!a.out.empty(), "--out: the run directory is required");
  check_arg(a.resume || !a.config.empty(),
            "--config: a training config file is required (or --resume to continue a run)");
  check_arg(!a.resume || (a.config.empty() && a.sets.empty()),
            "--resume continues with the run's own config.json; do not give --config or --set");
  check_arg(!a.resume || !a.compare_dense,
            "--compare-dense needs a new run (it gives the dense model the MoE run's time)");
  Communicator& comm = world();
  check_arg(!a.compare_dense || comm.size() == 1,
            "--compare-dense runs in one process; start it without mpirun");
  if (a.threads > 0) set_num_threads(a.threads);
  TrainOptions opt;
  opt.comm = &comm;
  opt.stop_after_step = a.stop_after;
  opt.stop_signal = &g_signal;
  opt.log = a.quiet || comm.rank() != 0 ? nullptr : &std::cerr;
  opt.live = opt.log && isatty(STDERR_FILENO);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  const TrainConfig config = a.resume ? TrainConfig{} : load_train_config(a.config, a.sets);
  g_preparing = true;
  std::unique_ptr<Trainer> trainer =
      a.resume ? Trainer::resume(a.out, opt) : std::make_unique<Trainer>(config, a.out, opt);
  g_preparing = false;
  if (a.resume && trainer->step() > 0 && opt.log)
    *opt.log << "resuming " << a.out << " at step " << trainer->step() << "\n";
  TrainResult r;
  try {
    r = trainer->run();
  } catch (const NonFiniteLoss& e) {  // every rank sees the same loss and stops here
    if (comm.rank() == 0) std::cerr << "sparsemoe: " << e.what() << "\n";
    return 1;
  }
  if (comm.rank() != 0)  // rank 0 reports
    return r.outcome == TrainOutcome::kInterrupted ? 128 + g_signal.load() : 0;
  if (r.outcome == TrainOutcome::kAlreadyFinished) {
    std::cerr << fmt::format(
        "the run in {} is finished (step {}); nothing to do (results: {}/results.json)\n", a.out,
        r.step, a.out);
    return 0;
  }
  if (r.outcome != TrainOutcome::kFinished) {
    std::cerr << fmt::format(
        "{} at step {}; checkpoint saved in {}/checkpoint.safetensors; "
        "continue with: sparsemoe train --resume --out {}\n",
        r.outcome == TrainOutcome::kInterrupted ? "interrupted" : "stopped", r.step, a.out, a.out);
    return r.outcome == TrainOutcome::kInterrupted ? 128 + g_signal.load() : 0;
  }
  const TaskData& d = trainer->data();
  std::cout << fmt::format(
      "test accuracy {:.4f} on {} examples (majority class '{}': {:.4f}); {:.0f} s "
      "(pretrain {:.0f} s, finetune {:.0f} s)\nrun: {}  report: {}/report.html\n",
      r.test.accuracy, r.test.count, d.label_names[d.majority_label], r.majority_accuracy,
      r.seconds, r.phase_seconds[0], r.phase_seconds[1], a.out, a.out);
  return a.compare_dense ? compare_dense(a, *trainer, r, opt) : 0;
}

}  // namespace

void add_train_command(CLI::App& app, std::function<int()>& run) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Pretrain (masked LM) then fine-tune a Sparse Mixer into a run directory");
  cmd->add_option("--config", a->config, "training config file (JSON; see configs/)");
  cmd->add_option("--set", a->sets, "override a config key: key=value (dotted paths; repeatable)");
  cmd->add_option("--out", a->out, "run directory (created; holds checkpoint, metrics, report)");
  cmd->add_flag("--resume", a->resume, "continue the run in --out from its checkpoint");
  cmd->add_option("--stop-after", a->stop_after,
                  "checkpoint and stop once this many steps are done (continue with --resume)");
  cmd->add_option("--threads", a->threads, "OpenMP threads (default: all cores)")
      ->check(CLI::Range(1, kMaxThreads));
  cmd->add_flag("--quiet", a->quiet, "no progress output");
  cmd->add_flag("--compare-dense", a->compare_dense,
                "then train the same network without MoE layers for the same time (in OUT/dense) "
                "and print both test accuracies next to the majority class");
  cmd->callback([a, &run] { run = [a] { return run_train(*a); }; });
}

}  // namespace sparsemoe::cli
