// `sparsemoe train`: trains a Sparse Mixer as a training config says (masked-LM pretraining, then
// fine-tuning), into a run directory; `--resume` continues a run bitwise. SIGINT and SIGTERM
// save a checkpoint and exit with 128 + the signal; a non-finite loss exits with status 1 and the
// last good checkpoint kept; bad configs and arguments exit with status 2.
#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/train/trainer.h"

namespace sparsemoe::cli {

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_stop_signal(int sig) {
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
};

int run_train(const TrainArgs& a) {
  check_arg(!a.out.empty(), "--out: the run directory is required");
  check_arg(a.resume || !a.config.empty(),
            "--config: a training config file is required (or --resume to continue a run)");
  check_arg(!a.resume || (a.config.empty() && a.sets.empty()),
            "--resume continues with the run's own config.json; do not give --config or --set");
  if (a.threads > 0) set_num_threads(a.threads);
  TrainOptions opt;
  opt.stop_after_step = a.stop_after;
  opt.stop_signal = &g_signal;
  opt.log = a.quiet ? nullptr : &std::cerr;
  opt.live = !a.quiet && isatty(STDERR_FILENO);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::unique_ptr<Trainer> trainer =
      a.resume ? Trainer::resume(a.out, opt)
               : std::make_unique<Trainer>(load_train_config(a.config, a.sets), a.out, opt);
  if (a.resume && opt.log)
    *opt.log << "resuming " << a.out << " at step " << trainer->step() << "\n";
  TrainResult r;
  try {
    r = trainer->run();
  } catch (const NonFiniteLoss& e) {
    std::cerr << "sparsemoe: " << e.what() << "\n";
    return 1;
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
  return 0;
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
  cmd->add_option("--threads", a->threads, "OpenMP threads (default: all cores)");
  cmd->add_flag("--quiet", a->quiet, "no progress output");
  cmd->callback([a, &run] { run = [a] { return run_train(*a); }; });
}

}  // namespace sparsemoe::cli
