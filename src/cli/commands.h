// Subcommands of the sparsemoe tool; each registers its flags on the CLI11 app and returns the
// process exit status from run.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace sparsemoe::cli {

// `sparsemoe route`'s answer (JSON text) to a request (JSON text); throws InvalidArgument naming
// the problem. The route fuzzer calls it.
std::string route_answer(const std::string& request);

// Registers a subcommand; `run` is set to its action.
void add_route_command(CLI::App& app, std::function<int()>& run);
void add_bench_command(CLI::App& app, std::function<int()>& run);
void add_train_command(CLI::App& app, std::function<int()>& run);
// eval, predict, inspect and report: the commands that use a run directory.
void add_run_commands(CLI::App& app, std::function<int()>& run);
// `bench model`, registered under the `bench` subcommand.
void add_bench_model_command(CLI::App& bench, std::function<int()>& run);
// `bench cases`: the test harness's registered cases.
void add_bench_cases_command(CLI::App& bench, std::function<int()>& run);
// `bench comm` (bench_comm_command.cc): the communicator's costs under mpirun.
void add_bench_comm_command(CLI::App& bench, std::function<int()>& run);

}  // namespace sparsemoe::cli
