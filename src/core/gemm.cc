// GEMM dispatch to the configured BLAS library, forced single-threaded (see gemm.h).
#include "sparsemoe/core/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "sparsemoe/core/parallel.h"

#if defined(SPARSEMOE_BLAS_ONEDNN)
#include <dnnl.h>
#elif defined(SPARSEMOE_BLAS_OPENBLAS)
#include <cblas.h>
extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_corename(void);
#endif

namespace sparsemoe {

namespace {

// SPARSEMOE_SIMD=avx2 (or baseline) stands in for a CPU without AVX-512 (or AVX2), so it holds
// oneDNN to the same instruction set, once, before its first call, unless ONEDNN_MAX_CPU_ISA (or
// DNNL_MAX_CPU_ISA) already says which: before, the engine's kernels ran AVX2 while the library
// kept its AVX-512 code, and `bench moe` compared our AVX2 forward with an AVX-512 library GEMM.
// OpenBLAS picks its kernels when it loads (OPENBLAS_CORETYPE); it cannot be held here.
void hold_library_isa() {
#if defined(SPARSEMOE_BLAS_ONEDNN)
  static const bool once = [] {
    const char* simd = std::getenv("SPARSEMOE_SIMD");
    if (!simd || std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA")) return true;
    if (std::strcmp(simd, "avx2") == 0)
      dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx2);
    else if (std::strcmp(simd, "baseline") == 0)
      dnnl_set_max_cpu_isa(dnnl_cpu_isa_sse41);
    return true;
  }();
  (void)once;
#endif
}

void blas_call(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  hold_library_isa();
#if defined(SPARSEMOE_BLAS_ONEDNN)
  dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#else
  static const bool once = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)once;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
#endif
}

std::atomic<uint64_t> g_flops{0};

}  // namespace

void count_gemm_flops(int64_t m, int64_t n, int64_t k) {
  g_flops.fetch_add(
      2 * static_cast<uint64_t>(m) * static_cast<uint64_t>(n) * static_cast<uint64_t>(k),
      std::memory_order_relaxed);
}

uint64_t gemm_flops() { return g_flops.load(std::memory_order_relaxed); }

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  count_gemm_flops(m, n, k);
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  if (omp_in_parallel()) {
    blas_call(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Outside a parallel region the library would thread by itself; keep it to one thread.
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  blas_call(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  omp_set_num_threads(saved);
}

void matmul(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c, float beta) {
  // Tiles depend on the shape only. 256 rows keeps the library near its large-M rate; columns
  // are split when there are too few row tiles to occupy the threads.
  constexpr int64_t kRowTile = 256;
  const int64_t row_tiles = (m + kRowTile - 1) / kRowTile;
  int64_t col_tiles = 1;
  while (row_tiles * col_tiles < 8 && n / (col_tiles * 2) >= 128) col_tiles *= 2;
  const int64_t col_tile = (n + col_tiles - 1) / col_tiles;
  parallel_for(row_tiles * col_tiles, [&](int64_t item) {
    const int64_t r0 = (item / col_tiles) * kRowTile, c0 = (item % col_tiles) * col_tile;
    const int64_t rows = std::min(kRowTile, m - r0), cols = std::min(col_tile, n - c0);
    if (cols > 0)
      gemm(false, false, rows, cols, k, 1.f, a + r0 * k, k, b + c0, n, beta, c + r0 * n + c0, n);
  });
}

void gemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        const float av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const float bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        acc += static_cast<double>(av) * bv;
      }
      float& out = c[i * ldc + j];
      out = static_cast<float>(alpha * acc + (beta == 0.f ? 0.0 : beta * out));
    }
}

void gemm_library_threaded(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           const float* a, const float* b, float* c) {
#if defined(SPARSEMOE_BLAS_OPENBLAS)
  openblas_set_num_threads(num_threads());
#endif
  blas_call(trans_a, trans_b, m, n, k, 1.f, a, trans_a ? m : k, b, trans_b ? k : n, 0.f, c, n);
#if defined(SPARSEMOE_BLAS_OPENBLAS)
  openblas_set_num_threads(1);
#endif
}

std::string blas_backend() { return SPARSEMOE_BLAS_NAME; }

std::string blas_isa() {
  hold_library_isa();
#if defined(SPARSEMOE_BLAS_ONEDNN)
  switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41:
      return "sse41";
    case dnnl_cpu_isa_avx:
      return "avx";
    case dnnl_cpu_isa_avx2:
      return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
      return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core:
      return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "other";
  }
#else
  const char* name = openblas_get_corename();
  return name ? name : "unknown";
#endif
}

}  // namespace sparsemoe
