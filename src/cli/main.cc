// sparsemoe: the command-line tool. `route` shows a routing decision, `bench` times layers and
// networks, `train` trains a Sparse Mixer, `eval` / `predict` / `inspect` / `report` use a run.
// Usage errors and bad input exit with status 2 and one line on stderr.
#include <exception>
#include <iostream>

#include "commands.h"
#include "sparsemoe/ops/simd.h"

int main(int argc, char** argv) {
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
  try {
    sparsemoe::simd_target();  // a bad SPARSEMOE_SIMD is reported here, before any work
    return run();
  } catch (const std::exception& e) {
    std::cerr << "sparsemoe: error: " << e.what() << "\n";
    return 2;
  }
}
