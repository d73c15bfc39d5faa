// The machine probes (see probe.h). One loop per vector level, written with intrinsics inside
// target-attributed functions, since the library is compiled for baseline x86-64 with
// contraction off (a * b + c is never fused on its own).
#include "sparsemoe/ops/probe.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "sparsemoe/ops/simd.h"

namespace sparsemoe {

namespace {

// 12 independent chains: latency 4 x 2 pipes needs 8 in flight; 12 leaves margin.
constexpr int kChains = 12;

__attribute__((target("avx512f"))) float fma_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], m, c);
  for (int j = 1; j < kChains; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  float out[16];  // not _mm512_reduce_add_ps: GCC 12 warns inside it (-Wuninitialized)
  _mm512_storeu_ps(out, acc[0]);
  return out[0] + out[15];
}

__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) {
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], m, c);
  for (int j = 1; j < kChains; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  return out[0] + out[7];
}

float mul_add_sse(int64_t iters) {
  __m128 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm_set1_ps(static_cast<float>(j));
  const __m128 m = _mm_set1_ps(0.9999999f), c = _mm_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j) acc[j] = _mm_add_ps(_mm_mul_ps(acc[j], m), c);
  for (int j = 1; j < kChains; ++j) acc[0] = _mm_add_ps(acc[0], acc[j]);
  return _mm_cvtss_f32(acc[0]);
}

// Flops of one iteration of the level's loop, and the loop.
int flops_per_iter(SimdTarget t) {
  return kChains * 2 * (t == SimdTarget::kAvx512 ? 16 : t == SimdTarget::kAvx2 ? 8 : 4);
}
float run_loop(SimdTarget t, int64_t iters) {
  switch (t) {
    case SimdTarget::kAvx512:
      return fma_avx512(iters);
    case SimdTarget::kAvx2:
      return fma_avx2(iters);
    case SimdTarget::kBaseline:
      break;
  }
  return mul_add_sse(iters);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

volatile float g_sink;  // keeps the probes' results alive

}  // namespace

double fma_peak_gflops(int threads) {
  const SimdTarget t = simd_target();
  threads = std::max(1, threads);
  // Calibrate on one thread to about 0.05 s, then time all threads on 4x that.
  int64_t iters = 1 << 16;
  while (true) {
    const auto a = std::chrono::steady_clock::now();
    g_sink = run_loop(t, iters);
    if (seconds_since(a) > 0.05 || iters > (int64_t{1} << 40)) break;
    iters *= 2;
  }
  iters *= 4;
  const auto a = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  { g_sink = run_loop(t, iters); }
  const double s = seconds_since(a);
  return static_cast<double>(threads) * static_cast<double>(iters) * flops_per_iter(t) / s / 1e9;
}

double read_bandwidth_gbps(int threads) {
  threads = std::max(1, threads);
  const int64_t n = int64_t{64} << 20;  // 256 MB of floats: far beyond any cache
  std::vector<float> buf(n);
  for (int64_t i = 0; i < n; i += 1024) buf[i] = 1.f;  // touched, so the pages exist
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const auto a = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    {
      const int id = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t begin = n * id / nt, end = n * (id + 1) / nt;
      __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t i = begin; i + 16 <= end; i += 16) {
        s0 = _mm_add_ps(s0, _mm_loadu_ps(&buf[i]));
        s1 = _mm_add_ps(s1, _mm_loadu_ps(&buf[i + 4]));
        s2 = _mm_add_ps(s2, _mm_loadu_ps(&buf[i + 8]));
        s3 = _mm_add_ps(s3, _mm_loadu_ps(&buf[i + 12]));
      }
      g_sink = _mm_cvtss_f32(_mm_add_ps(_mm_add_ps(s0, s1), _mm_add_ps(s2, s3)));
    }
    best = std::max(best, static_cast<double>(n) * sizeof(float) / seconds_since(a) / 1e9);
  }
  return best;
}

}  // namespace sparsemoe
