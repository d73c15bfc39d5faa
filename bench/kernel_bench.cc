// Google Benchmark micro-benchmarks of the kernels: GEMM on expert shapes, the routers, and the
// fused expert FFN on gathered rows. Layer-level timings live in `sparsemoe bench moe`.
#include <benchmark/benchmark.h>

#include <numeric>
#include <vector>

#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/ops/expert_ffn.h"
#include "sparsemoe/ops/gemm_kernel.h"
#include "sparsemoe/ops/kernels.h"

namespace sm = sparsemoe;

static void BM_Gemm(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  sm::Tensor a({M, K}, 0.5f), b({K, N}, 0.25f), c({M, N});
  for (auto _ : state)
    sm::gemm(false, false, M, N, K, 1.f, a.data(), K, b.data(), N, 0.f, c.data(), N);
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Gemm)
    ->ArgsProduct({{16, 64, 256, 1024}, {512}, {2048}})
    ->ArgsProduct({{16, 64, 256, 1024}, {2048}, {512}});

// The engine's own kernel on the same shapes (the level in use: SPARSEMOE_SIMD selects it), with
// B row-major (forward), B transposed (the backward's dX = dH . W^T) and A transposed (weight
// gradients X^T . dH, M and K swapped).
static void kernel_gemm_bench(benchmark::State& state, bool ta, bool tb) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  sm::Tensor a({M, K}, 0.5f), b({K, N}, 0.25f), c({M, N});
  const auto ar = ta ? sm::MatRef::transposed(a.data(), M) : sm::MatRef::rows(a.data(), K);
  const auto br = tb ? sm::MatRef::transposed(b.data(), K) : sm::MatRef::rows(b.data(), N);
  for (auto _ : state) sm::kernel_gemm(M, N, K, ar, br, c.data(), N, ta);
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
static void BM_KernelGemm(benchmark::State& state) { kernel_gemm_bench(state, false, false); }
static void BM_KernelGemmBt(benchmark::State& state) { kernel_gemm_bench(state, false, true); }
static void BM_KernelGemmAt(benchmark::State& state) { kernel_gemm_bench(state, true, false); }
BENCHMARK(BM_KernelGemm)
    ->ArgsProduct({{1, 16, 64, 256, 1024}, {512}, {2048}})
    ->ArgsProduct({{1, 16, 64, 256, 1024}, {2048}, {512}});
// Row-major B packed once beforehand (PackedWeights, as inference runs), against packing per call
// (BM_KernelGemm), on expert shapes and BERT-Base's dense ones at one 512-row tile.
static void BM_KernelGemmPacked(benchmark::State& state) {
  const int64_t M = state.range(0), K = state.range(1), N = state.range(2);
  sm::Tensor a({M, K}, 0.5f), b({K, N}, 0.25f), c({M, N});
  sm::PackedWeights packed;
  packed.pack(1, K, N, b.data(), 0);
  const float* panels = packed.panels(0, 0, K);
  for (auto _ : state)
    sm::kernel_gemm(M, N, K, sm::MatRef::rows(a.data(), K), sm::MatRef::rows(b.data(), N), c.data(),
                    N, false, nullptr, panels);
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_KernelGemmPacked)
    ->ArgsProduct({{64, 256, 512}, {512}, {2048}})
    ->ArgsProduct({{64, 256, 512}, {2048}, {512}})
    ->ArgsProduct({{512}, {768}, {3072}})
    ->ArgsProduct({{512}, {3072}, {768}});
BENCHMARK(BM_KernelGemm)
    ->ArgsProduct({{512}, {512}, {2048}})
    ->ArgsProduct({{512}, {2048}, {512}})
    ->ArgsProduct({{512}, {768}, {3072}})
    ->ArgsProduct({{512}, {3072}, {768}});
BENCHMARK(BM_KernelGemmBt)->ArgsProduct({{1, 16, 256}, {512, 2048}, {512, 2048}});
BENCHMARK(BM_KernelGemmAt)->ArgsProduct({{512}, {16, 256}, {512, 2048}});

static std::vector<float> random_probs(int64_t n, int64_t E) {
  std::vector<float> p(n * E);
  for (int64_t i = 0; i < n * E; ++i) p[i] = sm::uniform01(7, i) * 4.f;
  sm::softmax_rows(p.data(), n, E);
  return p;
}

// One routing policy on fixed probabilities: experts-choose (k = 0 here), tokens-choose k, top2.
static void route_bench(benchmark::State& state, sm::RouterType type, int64_t k) {
  const int64_t G = 8, T = 512, E = 16;
  auto p = random_probs(G * T, E);
  sm::RouterConfig rc;
  rc.type = type;
  rc.num_experts = E;
  rc.num_selected_experts = k;
  const auto policy = sm::make_policy(rc);
  sm::RouteArgs a;
  a.probs = a.logits = p.data();
  a.G = G, a.T = T, a.E = E, a.C = T / E;
  sm::RoutingPlan plan;
  sm::PolicySaved saved;
  for (auto _ : state) policy->route(a, plan, saved);
  state.SetItemsProcessed(state.iterations() * G * T);
}
static void BM_RouteExpertsChoose(benchmark::State& state) {
  route_bench(state, sm::RouterType::kExpertsChoose, 1);
}
BENCHMARK(BM_RouteExpertsChoose);
static void BM_RouteTokensChoose(benchmark::State& state) {
  route_bench(state, sm::RouterType::kTokensChoose, state.range(0));
}
BENCHMARK(BM_RouteTokensChoose)->Arg(1)->Arg(2);
static void BM_RouteTop2(benchmark::State& state) { route_bench(state, sm::RouterType::kTop2, 2); }
BENCHMARK(BM_RouteTop2);

static void BM_FfnForward(benchmark::State& state) {
  const int64_t E = 16, H = 512, F = 2048, rows = state.range(0);
  sm::Tensor w1({E, H, F}, 0.01f), w2({E, F, H}, 0.01f), b1({E, F}), b2({E, H});
  sm::Tensor xs({E * rows, H}, 0.5f), ys({E * rows, H});
  std::vector<int64_t> off(E + 1);
  for (int64_t e = 0; e <= E; ++e) off[e] = e * rows;
  sm::FfnParams p{.E = E,
                  .H = H,
                  .F = F,
                  .w1 = w1.data(),
                  .b1 = b1.data(),
                  .w2 = w2.data(),
                  .b2 = b2.data(),
                  .activation = sm::Activation::kGeluTanh};
  sm::FfnSaved saved;
  for (auto _ : state) sm::ffn_forward(p, off.data(), xs.data(), ys.data(), {}, saved);
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * E * rows * H * F, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}
BENCHMARK(BM_FfnForward)->Arg(8)->Arg(64)->Arg(256)->UseRealTime();

BENCHMARK_MAIN();
