// sparsemoe: the command-line tool. `route` shows a routing decision, `bench` times layers and
// networks, `train` trains a Sparse Mixer, `eval` / `predict` / `inspect` / `report` use a run.
// Usage errors and bad input exit with status 2 and one line on stderr.
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>

#include "commands.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/ops/simd.h"

namespace {

// Idle OpenMP threads yield soon instead of spinning long (issue 13). libgomp's default has a
// thread waiting at a barrier spin for about 300,000 iterations, so two threaded programs on the
// same cores starve each other (measured: each kept 5-34% of its solo training throughput);
// OMP_WAIT_POLICY=PASSIVE cost a solo training 30%. A spin of 1,000 iterations kept 50-68% each
// while costing the tiny preset's solo training about 5% (docs/performance.md). libgomp reads the
// setting when the program loads, so the tool sets it by running itself again once, unless the
// user chose a policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT).
void cooperative_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  ::setenv("GOMP_SPINCOUNT", "1000", 1);
  ::execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
}

}  // namespace

int main(int argc, char** argv) {
  cooperative_openmp(argv);
  CLI::App app{"sparsemoe: sparsely-activated Mixture-of-Experts engine"};
  app.require_subcommand(1);
  std::function<int()> run;
  sparsemoe::cli::add_route_command(app, run);
  sparsemoe::cli::add_bench_command(app, run);
  sparsemoe::cli::add_train_command(app, run);
  sparsemoe::cli::add_run_commands(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  // Under mpirun every rank runs this program. A rank that fails ends the whole job with its
  // message (abort_job), so that no other rank is left waiting in a collective.
  const bool many = sparsemoe::launched_under_mpi() && sparsemoe::built_with_mpi();
  try {
    sparsemoe::simd_target();  // a bad SPARSEMOE_SIMD is reported here, before any work
    if (many && sparsemoe::world().size() > 1 && !app.got_subcommand("train") &&
        !app.get_subcommand("bench")->got_subcommand("moe") &&
        !app.get_subcommand("bench")->got_subcommand("model") &&
        !app.get_subcommand("bench")->got_subcommand("comm"))
      throw std::invalid_argument("under mpirun with " + std::to_string(sparsemoe::world().size()) +
                                  " processes: only `train`, `bench moe`, `bench model` and "
                                  "`bench comm` run on many processes (docs/distributed.md)");
    return run();
  } catch (const sparsemoe::AgreedError& e) {  // every rank has it: reported once, no abort
    if (sparsemoe::world().rank() == 0) std::cerr << "sparsemoe: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    if (many) sparsemoe::abort_job(std::string("sparsemoe: error: ") + e.what(), 2);
    std::cerr << "sparsemoe: error: " << e.what() << "\n";
    return 2;
  }
}
