// `sparsemoe bench cases`: times the harness's registered cases (sparsemoe/cases/cases.h), the
// same ops, layers and networks the tests check, forward and forward+backward, median of runs.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "bench_util.h"
#include "commands.h"
#include "sparsemoe/cases/cases.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"

namespace sparsemoe::cli {

namespace {

struct CasesArgs {
  std::string filter;  // substring of the case name; "" = all
  int threads = 0;
  double min_time = 0.2;
  bool json_out = false;
};

int run_bench_cases(const CasesArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  nlohmann::json results = nlohmann::json::array();
  for (const cases::Case& c : cases::registry()) {
    if (c.name.find(a.filter) == std::string::npos) continue;
    auto s = c.make();
    std::vector<Tensor> r;
    s->forward(c.options);  // shapes the outputs
    for (const Tensor* y : s->outputs()) r.push_back(cases::random_input(y->shape(), c.dout_seed));
    const double fwd = time_it([&] { s->forward(c.options); }, a.min_time);
    const double fb = time_it(
        [&] {
          s->forward(c.options);
          s->backward(r);
        },
        a.min_time);
    nlohmann::json row = {
        {"case", c.name}, {"forward_ms", fwd * 1e3}, {"forward_backward_ms", fb * 1e3}};
    const double flops = c.flops ? c.flops(*s) : 0.0;
    if (flops > 0) row["forward_gflops"] = flops / fwd / 1e9;
    results.push_back(row);
  }
  check_arg(!results.empty(), "--filter: no case name contains '" + a.filter + "'");
  const nlohmann::json env = bench_environment();
  if (a.json_out) {
    std::cout << nlohmann::json{{"environment", env}, {"results", results}}.dump(2) << "\n";
    return 0;
  }
  std::cout << "sparsemoe bench cases\nenvironment: " << env.dump() << "\n";
  for (const auto& row : results) {
    char line[256];
    std::snprintf(line, sizeof line, "%-36s fwd %9.4f ms  fwd+bwd %9.4f ms",
                  row["case"].get<std::string>().c_str(), row["forward_ms"].get<double>(),
                  row["forward_backward_ms"].get<double>());
    std::cout << line;
    if (row.contains("forward_gflops"))
      std::cout << "  " << row["forward_gflops"].get<double>() << " GFLOP/s";
    std::cout << "\n";
  }
  return 0;
}

}  // namespace

void add_bench_cases_command(CLI::App& bench, std::function<int()>& run) {
  auto* cmd = bench.add_subcommand(
      "cases", "Time the test harness's cases (the ops, layers and networks the tests check)");
  auto a = std::make_shared<CasesArgs>();
  cmd->add_option("--filter", a->filter, "only cases whose name contains this");
  cmd->add_option("--threads", a->threads, "threads (default: OpenMP default)")
      ->check(CLI::Range(1, kMaxThreads));
  cmd->add_option("--min-time", a->min_time, "seconds per measurement")->capture_default_str();
  cmd->add_flag("--json", a->json_out, "machine-readable output");
  cmd->callback([&run, a] { run = [a] { return run_bench_cases(*a); }; });
}

}  // namespace sparsemoe::cli
