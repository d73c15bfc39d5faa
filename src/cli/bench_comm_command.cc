// `sparsemoe bench comm`: the communicator's own costs under mpirun, the numbers the
// communication cost model of docs/distributed.md is calibrated on: the one-way latency of a small
// message between two ranks, the bandwidth of a large one, and the variable all-to-all of rows
// that expert parallelism runs, over a range of sizes. Every rank takes part; rank 0 prints.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench_util.h"
#include "commands.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/dist/communicator.h"

namespace sparsemoe::cli {

namespace {

using nlohmann::json;

struct CommArgs {
  int runs = 20;
  bool json_out = false;
};

int run_bench_comm(const CommArgs& a) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  check_arg(P >= 2,
            "bench comm: run it under mpirun with at least 2 processes, e.g. `mpirun -np 2 "
            "sparsemoe bench comm`");
  const int partner = r ^ 1;  // pairs (0, 1), (2, 3), ...; an odd last rank talks to itself
  const int peer = partner < P ? partner : r;
  json j = {{"processes", P}, {"backend", w.backend()}, {"cpu", cpu_model()}};
  // Latency: a round trip of 8 bytes is two one-way messages.
  double ping = 0, pong = 0;
  const double rtt = time_collective(w, a.runs * 10, [&] {
    w.sendrecv(&ping, &pong, sizeof ping, peer);
    w.sendrecv(&ping, &pong, sizeof ping, peer);
  });
  j["latency_us"] = rtt / 2 * 1e6;
  // Bandwidth: 64 MiB each way at once (sendrecv), bytes moved per second per rank.
  const int64_t bytes = int64_t{64} << 20;
  std::vector<char> out(bytes, 1), in(bytes);
  const double t_big =
      time_collective(w, a.runs, [&] { w.sendrecv(out.data(), in.data(), bytes, peer); });
  j["bandwidth_gbps"] = bytes / t_big / 1e9;
  // The all-to-all of rows of 2 KiB (H = 512 floats) that expert parallelism runs: each rank sends
  // `rows` rows in total, split evenly over the ranks.
  json a2a = json::array();
  for (int64_t rows : {64, 512, 4096, 16384}) {
    const int64_t row_bytes = 2048;
    std::vector<int64_t> counts(P, rows / P);
    std::vector<char> send(rows * row_bytes, 2), recv(rows * row_bytes);
    const double t = time_collective(w, a.runs, [&] {
      w.alltoallv(send.data(), counts.data(), recv.data(), counts.data(), row_bytes);
    });
    a2a.push_back({{"rows_per_rank", rows},
                   {"bytes_sent_per_rank", rows * row_bytes * (P - 1) / P},
                   {"ms", t * 1e3}});
  }
  j["alltoallv"] = a2a;
  if (r == 0) {
    if (a.json_out) {
      std::cout << j.dump(2) << "\n";
    } else {
      std::cout << "sparsemoe bench comm  " << P << " processes (" << w.backend() << ")\n"
                << "latency " << j["latency_us"].get<double>() << " us one way, bandwidth "
                << j["bandwidth_gbps"].get<double>() << " GB/s per rank (64 MiB sendrecv)\n";
      for (const auto& x : a2a)
        std::cout << "alltoallv " << x["rows_per_rank"].get<int64_t>()
                  << " rows of 2 KiB per rank: " << x["ms"].get<double>() << " ms\n";
    }
  }
  return 0;
}

}  // namespace

void add_bench_comm_command(CLI::App& bench, std::function<int()>& run) {
  auto* comm = bench.add_subcommand(
      "comm", "Under mpirun: the communicator's latency, bandwidth and all-to-all times");
  auto a = std::make_shared<CommArgs>();
  comm->add_option("--runs", a->runs, "timed calls per measurement (median)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  comm->add_flag("--json", a->json_out, "machine-readable output");
  comm->callback([&run, a] { run = [a] { return run_bench_comm(*a); }; });
}

}  // namespace sparsemoe::cli
