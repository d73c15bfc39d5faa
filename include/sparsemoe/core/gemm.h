// The one GEMM primitive, row-major, behind which the BLAS library is swappable at configure
// time (oneDNN by default, OpenBLAS with -DSPARSEMOE_BLAS=openblas; see docs/performance.md for
// the measurement that chose oneDNN). gemm() always runs single-threaded: parallelism comes from
// parallel_for over a partition fixed by the shapes, which keeps results bitwise identical across
// thread counts. matmul() is that partition for one plain product.
#pragma once

#include <cstdint>
#include <string>

namespace sparsemoe {

// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C, row-major, leading dimensions in floats.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// C[m,n] = A[m,k] * B[k,n] (+ beta*C), parallel over fixed row/column tiles.
void matmul(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c,
            float beta = 0.f);

// Reference GEMM: plain loops, used by tests to check gemm() and by nothing on a fast path.
void gemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc);

// The library called directly with its own threading (thread count from OpenMP). Only the
// benchmarks use it, to measure the ceiling the library reaches on our shapes.
void gemm_library_threaded(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           const float* a, const float* b, float* c);

// The running total of floating-point operations (2*m*n*k per product) done by gemm() and by
// the engine's GEMM kernel (ops/gemm_kernel.h), for the benchmarks' GFLOP/s. Relaxed atomic adds:
// counting never orders anything.
void count_gemm_flops(int64_t m, int64_t n, int64_t k);
uint64_t gemm_flops();

// "onednn" or "openblas".
std::string blas_backend();

// The instruction set the BLAS library runs: oneDNN's effective ISA ("avx2", "avx512_core", ...)
// or OpenBLAS's kernel family ("haswell", "skylakex", ...). SPARSEMOE_SIMD=avx2 or baseline holds
// oneDNN to that level too (unless ONEDNN_MAX_CPU_ISA is set); OpenBLAS follows
// OPENBLAS_CORETYPE only.
std::string blas_isa();

}  // namespace sparsemoe
