// `sparsemoe bench moe`: times the MoE layer forward and forward+backward on random inputs and
// reports tokens/s and GFLOP/s of useful expert work, next to the rate the GEMM library itself
// reaches on the same expert shapes (its own threading), and the environment that matters.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "commands.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/ops/probe.h"

namespace sparsemoe::cli {

namespace {

using nlohmann::json;

struct BenchArgs {
  int64_t hidden = 512, d_ff = 2048, experts = 16, tokens_per_group = 512, batch = 8;
  std::string router = "all";
  std::string policy = "all";  // top2 second_expert_policy
  int64_t k = 0;               // 0: the default set (experts_choose, tokens_choose k=1 and k=2)
  double capacity_factor = 1.0;
  int threads = 0;
  double min_time = 1.0;
  bool dropless = false;
  bool json_out = false;
  int runs = 5;    // timed calls under mpirun (a fixed count: every call is collective)
  int chunks = 4;  // under mpirun, with overlap: return-exchange chunks
};

MoeLayerConfig bench_config(const BenchArgs& a, const std::string& router, int64_t k) {
  MoeLayerConfig c;
  c.hidden_size = a.hidden;
  c.experts.num_experts = a.experts;
  c.experts.d_ff = a.d_ff;
  c.experts.activation = "gelu_tanh";
  c.router.num_experts = a.experts;
  c.router.type = parse_router_type(router);
  c.router.num_selected_experts = k;
  // top2: the lingvo policy from --policy (the other routers keep the default).
  const auto policy = kSecondExpertPolicies.parse(a.policy, "--policy");
  if (make_policy(c.router)->reports_over_capacity()) c.router.top2.second_expert_policy = policy;
  c.train_capacity_factor = c.eval_capacity_factor = a.capacity_factor;
  // --dropless applies to the routers that can route without a capacity limit.
  c.dropless = a.dropless;
  try {
    c.validate();
  } catch (const ConfigError&) {
    c.dropless = false;
  }
  return c;
}

json bench_one(const BenchArgs& a, const std::string& router, int64_t k) {
  const MoeLayerConfig c = bench_config(a, router, k);
  MoeLayer layer(c);
  const int64_t B = a.batch, L = a.tokens_per_group, H = a.hidden, N = B * L;
  Tensor x({B, L, H}), y, dy({B, L, H}), dx;
  for (int64_t i = 0; i < x.numel(); ++i) {
    x[i] = 2.f * uniform01(1, i) - 1.f;
    dy[i] = 2.f * uniform01(2, i) - 1.f;
  }
  ForwardOptions opt{true, 0};
  MoeMetrics m = layer.forward(x, y, opt);
  const int64_t R = layer.plan().rows();
  const double fwd = time_it([&] { layer.forward(x, y, opt); }, a.min_time);
  // The forward again on weights packed once beforehand, as a loaded model runs inference (the
  // backward below drops the packed copy).
  layer.prepare_inference();
  const double fwd_packed = time_it([&] { layer.forward(x, y, opt); }, a.min_time);
  // Inference, as PyTorch's no_grad forward: packed weights, evaluation mode (the same capacity
  // factor here), nothing saved for a backward.
  const ForwardOptions infer{.training = false, .save_for_backward = false};
  const double fwd_infer = time_it([&] { layer.forward(x, y, infer); }, a.min_time);
  // Forward and backward, the gradients added into the buffers (no zeroing between calls: the
  // figure compared with PyTorch's since the first measurements), and written instead
  // (GradMode::kOverwrite: a step's whole gradient work without a zeroing pass, the experts
  // without tokens getting zeros, which is most of it for a single token).
  const double fb = time_it(
      [&] {
        layer.forward(x, y, opt);
        layer.backward(dy, dx);
      },
      a.min_time);
  const double fb_written = time_it(
      [&] {
        layer.forward(x, y, opt);
        layer.backward(dy, dx, 1.0, GradMode::kOverwrite);
      },
      a.min_time);
  // Useful expert work: 2 GEMMs of 2*H*F flops per filled slot; backward is twice forward.
  const double flops = 2.0 * R * 2.0 * H * a.d_ff;
  // Ceiling: the library's own threaded GEMMs on each expert's row count.
  std::vector<int64_t> rows(a.experts);
  for (int64_t e = 0; e < a.experts; ++e)
    rows[e] = layer.plan().expert_offsets[e + 1] - layer.plan().expert_offsets[e];
  const int64_t maxr = std::max<int64_t>(1, *std::max_element(rows.begin(), rows.end()));
  Tensor ga({maxr, a.d_ff}, 0.5f), gw1({H, a.d_ff}, 0.01f), gw2({a.d_ff, H}, 0.01f),
      gh({maxr, a.d_ff}), go({maxr, H}), gx({maxr, H}, 0.5f);
  const double lib = time_it(
      [&] {
        for (int64_t e = 0; e < a.experts; ++e) {
          if (!rows[e]) continue;
          gemm_library_threaded(false, false, rows[e], a.d_ff, H, gx.data(), gw1.data(), gh.data());
          gemm_library_threaded(false, false, rows[e], H, a.d_ff, ga.data(), gw2.data(), go.data());
        }
      },
      a.min_time);
  // The bytes of expert weights one forward must read: every expert that received a row.
  const int64_t used = std::count_if(rows.begin(), rows.end(), [](int64_t r) { return r > 0; });
  return {{"router", router},
          {"dropless", c.dropless},
          {"experts_used", used},
          {"expert_weight_bytes", used * 2 * H * a.d_ff * 4},
          {"k", k},
          {"tokens", N},
          {"rows", R},
          {"expert_capacity", m.expert_capacity},
          {"forward_ms", fwd * 1e3},
          {"forward_packed_ms", fwd_packed * 1e3},
          {"inference_ms", fwd_infer * 1e3},
          {"forward_backward_ms", fb * 1e3},
          {"forward_backward_written_ms", fb_written * 1e3},
          {"forward_tokens_per_s", N / fwd},
          {"forward_backward_tokens_per_s", N / fb},
          {"forward_gflops", flops / fwd / 1e9},
          {"forward_backward_gflops", 3 * flops / fb / 1e9},
          {"library_gemm_gflops", flops / lib / 1e9},
          {"forward_vs_library", lib / fwd}};
}

// Under mpirun: the layer with its experts split over the ranks, each rank holding batch x T
// tokens of a global batch P times as large (weak scaling). Reported next to the ideal: every
// rank running the whole layer alone on its own tokens, all at once (so they share the machine as
// the parallel run does), which is P processes' throughput with no exchange at all.
json bench_distributed(const BenchArgs& a, const std::string& router, int64_t k, Communicator& w) {
  const MoeLayerConfig c = bench_config(a, router, k);
  const int P = w.size(), rank = w.rank();
  const int64_t B = a.batch, L = a.tokens_per_group, H = a.hidden, N = B * L;
  Tensor x({B, L, H}), dy({B, L, H}), y, dx;
  for (int64_t i = 0; i < x.numel(); ++i) {  // keyed by global position: ranks hold other tokens
    x[i] = 2.f * uniform01(1, rank * N * H + i) - 1.f;
    dy[i] = 2.f * uniform01(2, rank * N * H + i) - 1.f;
  }
  ForwardOptions opt{true, 0};
  MoeLayer alone(c);
  const double ideal = time_collective(w, a.runs, [&] {
    alone.forward(x, y, opt);
    alone.backward(dy, dx);
  });
  MoeLayer layer(c);
  const int64_t whole_bytes = 4 * layer.count_params();
  layer.set_communicator(&w, true);  // storage split too: a rank holds its own experts
  const int64_t bytes_held = 4 * layer.count_params();
  opt.token_offset = rank * N;
  opt.global_tokens = P * N;
  opt.units = P;  // a rank's tokens are one data-parallel unit
  const double fwd = time_collective(w, a.runs, [&] { layer.forward(x, y, opt); });
  // Forward + backward with the own rows computed while the others travel (overlap, the
  // default), then without: exchange is the time spent waiting for transfers (exposed).
  int64_t bytes = 0;
  auto timed = [&](bool overlap, double& ex, double& co) {
    layer.set_overlap(overlap, a.chunks);
    std::vector<double> exchange, compute;
    const double t = time_collective(w, a.runs, [&] {
      layer.forward(x, y, opt);
      layer.backward(dy, dx);
      const ExchangeRows& ep = layer.activations().experts.ep;
      exchange.push_back(ep.exchange_seconds);
      compute.push_back(ep.compute_seconds);
      bytes = ep.bytes_sent;
    });
    std::sort(exchange.begin(), exchange.end());
    std::sort(compute.begin(), compute.end());
    ex = exchange[exchange.size() / 2], co = compute[compute.size() / 2];
    return t;
  };
  double ex = 0, co = 0, ex_plain = 0, co_plain = 0;
  const double fb = timed(true, ex, co);
  const double fb_plain = timed(false, ex_plain, co_plain);
  layer.set_overlap(true, a.chunks);
  const ExpertShard sh = layer.activations().experts.ep.shard;
  return {{"router", router},
          {"k", k},
          {"processes", P},
          {"rank", rank},
          {"experts_owned", sh.count},
          {"return_chunks", a.chunks},
          {"weight_bytes_per_rank", bytes_held},
          {"weight_bytes_one_process", whole_bytes},
          {"tokens_per_rank", N},
          {"forward_ms", fwd * 1e3},
          {"forward_backward_ms", fb * 1e3},
          {"forward_backward_tokens_per_s", P * N / fb},
          {"exchange_ms", ex * 1e3},
          {"expert_compute_ms", co * 1e3},
          {"exchange_share", ex / fb},
          {"no_overlap_forward_backward_ms", fb_plain * 1e3},
          {"no_overlap_exchange_ms", ex_plain * 1e3},
          {"no_overlap_exchange_share", ex_plain / fb_plain},
          {"bytes_sent_per_token", static_cast<double>(bytes) / N},
          {"ideal_forward_backward_ms", ideal * 1e3},
          {"scaling_efficiency", ideal / fb}};
}

int run_bench_moe_distributed(const BenchArgs& a,
                              const std::vector<std::pair<std::string, int64_t>>& runs) {
  Communicator& w = world();
  const json env = bench_environment(w);
  const bool print = w.rank() == 0;
  if (print && !a.json_out)
    std::cout << "sparsemoe bench moe  H=" << a.hidden << " F=" << a.d_ff << " E=" << a.experts
              << " T=" << a.tokens_per_group << " batch=" << a.batch << " per rank, " << w.size()
              << " processes (expert parallelism)\nenvironment: " << env.dump() << "\n";
  json results = json::array();
  for (const auto& [router, k] : runs) {
    json r = bench_distributed(a, router, k, w);
    // Every rank's exchange and compute times, for the slowest rank's view.
    const double mine[2] = {r["exchange_ms"].get<double>(), r["expert_compute_ms"].get<double>()};
    std::vector<double> all(2 * w.size());
    w.allgather(mine, sizeof mine, all.data());
    json per_rank = json::array();
    for (int p = 0; p < w.size(); ++p)
      per_rank.push_back({{"exchange_ms", all[2 * p]}, {"expert_compute_ms", all[2 * p + 1]}});
    r["per_rank"] = per_rank;
    results.push_back(r);
    if (print && !a.json_out) {
      char line[512];
      std::snprintf(
          line, sizeof line,
          "%-15s k=%ld  fwd %8.3f ms | fwd+bwd %8.3f ms %10.0f tok/s (all ranks) | "
          "rank 0: exchange %7.3f ms (%.0f%%), expert compute %7.3f ms, %.0f bytes "
          "sent per token | alone %8.3f ms: scaling efficiency %.0f%% | without "
          "overlap: fwd+bwd %8.3f ms, exchange %7.3f ms (%.0f%%) | layer weights on rank 0: "
          "%.1f MiB (one process: %.1f MiB)\n",
          router.c_str(), static_cast<long>(k), r["forward_ms"].get<double>(),
          r["forward_backward_ms"].get<double>(), r["forward_backward_tokens_per_s"].get<double>(),
          r["exchange_ms"].get<double>(), 100 * r["exchange_share"].get<double>(),
          r["expert_compute_ms"].get<double>(), r["bytes_sent_per_token"].get<double>(),
          r["ideal_forward_backward_ms"].get<double>(), 100 * r["scaling_efficiency"].get<double>(),
          r["no_overlap_forward_backward_ms"].get<double>(),
          r["no_overlap_exchange_ms"].get<double>(),
          100 * r["no_overlap_exchange_share"].get<double>(),
          r["weight_bytes_per_rank"].get<double>() / 1048576.0,
          r["weight_bytes_one_process"].get<double>() / 1048576.0);
      std::cout << line << std::flush;
    }
  }
  if (print && a.json_out)
    std::cout << json{{"environment", env}, {"results", results}}.dump(2) << "\n";
  return 0;
}

int run_bench_moe(const BenchArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  json env = bench_environment();
  // The machine's own limits, measured now at the level and thread count that run (issue 13).
  const double peak = fma_peak_gflops(num_threads());
  env["fma_peak_gflops"] = peak;
  env["read_bandwidth_gbps"] = read_bandwidth_gbps(num_threads());
  std::vector<std::pair<std::string, int64_t>> runs;
  if (a.router == "all" || a.router.empty()) {
    runs = {{"experts_choose", 1}, {"tokens_choose", 1}, {"tokens_choose", 2}};
    if (a.k > 0) runs = {{"experts_choose", 1}, {"tokens_choose", a.k}};
  } else {
    runs = {{a.router, a.router == "tokens_choose" ? std::max<int64_t>(a.k, 1)
                       : a.router == "top2"        ? 2
                                                   : 1}};
  }
  if (world().size() > 1) return run_bench_moe_distributed(a, runs);
  json results = json::array();
  if (!a.json_out)
    std::cout << "sparsemoe bench moe  H=" << a.hidden << " F=" << a.d_ff << " E=" << a.experts
              << " T=" << a.tokens_per_group << " batch=" << a.batch << " cf=" << a.capacity_factor
              << "\nenvironment: " << env.dump() << "\nmachine: FMA peak " << static_cast<int>(peak)
              << " GFLOP/s (" << env["simd"].get<std::string>() << ", " << num_threads()
              << " threads), library " << env["blas"].get<std::string>() << " at "
              << env["blas_isa"].get<std::string>() << ", read bandwidth "
              << static_cast<int>(env["read_bandwidth_gbps"].get<double>()) << " GB/s\n";
  for (const auto& [router, k] : runs) {
    json r = bench_one(a, router, k);
    r["forward_percent_of_fma_peak"] = 100 * r["forward_gflops"].get<double>() / peak;
    r["forward_backward_percent_of_fma_peak"] =
        100 * r["forward_backward_gflops"].get<double>() / peak;
    // Roofline of the few-token case: the time to read those weights once at the measured read
    // bandwidth, and how far the forward is from it (1.0 = at the roofline).
    r["read_roofline_ms"] = r["expert_weight_bytes"].get<double>() /
                            (env["read_bandwidth_gbps"].get<double>() * 1e9) * 1e3;
    r["forward_vs_read_roofline"] =
        r["forward_ms"].get<double>() / r["read_roofline_ms"].get<double>();
    results.push_back(r);
    if (!a.json_out) {
      char line[640];
      std::snprintf(
          line, sizeof line,
          "%-15s k=%ld  fwd %8.3f ms %10.0f tok/s %6.1f GFLOP/s (%.0f%% of peak), packed "
          "weights %8.3f ms, inference %8.3f ms | fwd+bwd %8.3f ms %10.0f tok/s %6.1f GFLOP/s "
          "(%.0f%%), gradients written %8.3f ms | library GEMM "
          "%6.1f GFLOP/s (fwd at "
          "%.0f%%) | weights %.1f MB, read roofline %.3f ms (fwd at %.2fx)\n",
          router.c_str(), static_cast<long>(k), r["forward_ms"].get<double>(),
          r["forward_tokens_per_s"].get<double>(), r["forward_gflops"].get<double>(),
          r["forward_percent_of_fma_peak"].get<double>(), r["forward_packed_ms"].get<double>(),
          r["inference_ms"].get<double>(), r["forward_backward_ms"].get<double>(),
          r["forward_backward_tokens_per_s"].get<double>(),
          r["forward_backward_gflops"].get<double>(),
          r["forward_backward_percent_of_fma_peak"].get<double>(),
          r["forward_backward_written_ms"].get<double>(), r["library_gemm_gflops"].get<double>(),
          100 * r["forward_vs_library"].get<double>(), r["expert_weight_bytes"].get<double>() / 1e6,
          r["read_roofline_ms"].get<double>(), r["forward_vs_read_roofline"].get<double>());
      std::cout << line << std::flush;
    }
  }
  if (a.json_out) std::cout << json{{"environment", env}, {"results", results}}.dump(2) << "\n";
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, std::function<int()>& run) {
  auto* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto* moe = bench->add_subcommand("moe", "Time the MoE layer forward and forward+backward");
  auto a = std::make_shared<BenchArgs>();
  moe->add_option("--hidden", a->hidden, "H")->capture_default_str()->check(CLI::PositiveNumber);
  moe->add_option("--d-ff", a->d_ff, "F")->capture_default_str()->check(CLI::PositiveNumber);
  moe->add_option("--experts", a->experts, "E")->capture_default_str()->check(CLI::PositiveNumber);
  moe->add_option("--tokens-per-group", a->tokens_per_group, "T (= sequence length)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  moe->add_option("--batch", a->batch, "sequences per call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  moe->add_option("--router", a->router,
                  "all (experts_choose, tokens_choose k=1 and 2), experts_choose, tokens_choose or "
                  "top2 (lingvo Top-2 gating)")
      ->capture_default_str()
      ->check(CLI::IsMember({"all", "experts_choose", "tokens_choose", "top2"}));
  moe->add_option("--policy", a->policy, "top2 second_expert_policy: all, sampling or random")
      ->capture_default_str()
      ->check(CLI::IsMember({"all", "sampling", "random"}));
  moe->add_option("--k", a->k, "experts per token for tokens_choose (default: 1 and 2)");
  moe->add_option("--capacity-factor", a->capacity_factor, "capacity factor")
      ->capture_default_str();
  moe->add_option("--threads", a->threads, "threads (default: OpenMP default)")
      ->check(CLI::Range(1, kMaxThreads));
  moe->add_option("--min-time", a->min_time, "seconds per measurement")->capture_default_str();
  moe->add_flag("--dropless", a->dropless, "tokens_choose without a capacity limit");
  moe->add_flag("--json", a->json_out, "machine-readable output");
  moe->add_option("--runs", a->runs, "under mpirun: timed calls per measurement (median)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  moe->add_option("--chunks", a->chunks,
                  "under mpirun, with overlap: the expert outputs go home in this many chunks")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  moe->callback([&run, a] { run = [a] { return run_bench_moe(*a); }; });
  add_bench_model_command(*bench, run);
  add_bench_cases_command(*bench, run);
  add_bench_comm_command(*bench, run);
}

}  // namespace sparsemoe::cli
