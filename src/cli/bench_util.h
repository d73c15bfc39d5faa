// Shared by the bench subcommands: the median-of-runs timer and the environment record that
// every measurement is reported with (threads, GEMM backend, the vector kernels' instruction set,
// OpenBLAS core type, CPU model).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/ops/simd.h"

namespace sparsemoe::cli {

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

inline nlohmann::json bench_environment() {
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  return {{"threads", num_threads()},
          {"blas", blas_backend()},
          {"blas_isa", blas_isa()},
          {"simd", simd_target_name(simd_target())},
          {"OPENBLAS_CORETYPE", core ? core : "(unset)"},
          {"cpu", cpu_model()}};
}

// The same under mpirun, with the process count and backend.
inline nlohmann::json bench_environment(const Communicator& w) {
  nlohmann::json env = bench_environment();
  env["processes"] = w.size();
  env["backend"] = w.backend();
  return env;
}

// Median seconds per call of fn over at least min_runs runs lasting at least min_time, after
// one warm-up call (which allocates the workspaces).
template <class Fn>
double time_it(Fn&& fn, double min_time, size_t min_runs = 3) {
  using Clock = std::chrono::steady_clock;
  fn();
  std::vector<double> t;
  const auto start = Clock::now();
  while (t.size() < min_runs ||
         std::chrono::duration<double>(Clock::now() - start).count() < min_time) {
    const auto a = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
    if (t.size() >= 1000) break;
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Under mpirun: the median seconds of `runs` calls of fn after one warm-up call, every rank
// starting each call together (a fixed count: every call is collective, so no rank may stop on
// its own clock). The slowest rank's median: a collective step lasts as long as its slowest rank.
template <class Fn>
double time_collective(Communicator& w, int runs, Fn&& fn) {
  using Clock = std::chrono::steady_clock;
  fn();
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    w.barrier();
    const auto a = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  std::vector<double> all(w.size());
  w.allgather(&t[t.size() / 2], sizeof(double), all.data());
  return *std::max_element(all.begin(), all.end());
}

}  // namespace sparsemoe::cli
