// The engine's own single-threaded GEMM: register-blocked micro-kernels for AVX2+FMA (6 x 16) and
// AVX-512 (14 x 32), chosen at run time (ops/simd.h), over panels packed into cache-sized buffers
// as they are used. Every output element is one fused multiply-add chain over k in the order
// 0..k-1, started from 0 (or from C when accumulating), so the result is bitwise the same at AVX2
// and AVX-512, for any blocking, and equal to gemm_fma_reference. The baseline level (no FMA)
// calls the BLAS library instead and rounds differently.
//
// Operands are given by strides, so transposed operands (W^T in the backward, X^T in weight
// gradients) need no copies: they are gathered into the packed panels or read in place. Weights
// are packed as they are used, into cache-sized buffers, once per call and row block of 512 (fewer
// rows when k is long: a thread's packed A block is bounded to 4 MiB): in a training step that is
// once per weight and direction, and the packing never goes through memory. When the rows are few
// (decode, a few tokens per expert) and B is row-major, B is read in place, whole rows at a time,
// at the machine's read bandwidth (the GEMV case). An epilogue called on each finished output
// block, while it is still in cache, fuses bias, activation and dropout into the write-out.
#pragma once

#include <cstdint>
#include <functional>

namespace sparsemoe {

// A read-only matrix by strides: element (r, c) is data[r * row_stride + c * col_stride].
struct MatRef {
  const float* data = nullptr;
  int64_t row_stride = 0, col_stride = 1;
  static MatRef rows(const float* d, int64_t ld) { return {d, ld, 1}; }        // row-major
  static MatRef transposed(const float* d, int64_t ld) { return {d, 1, ld}; }  // of a row-major
};

// Called once per finished block of C: rows [r0, r0 + rows), columns [c0, c0 + cols), in the
// call's own coordinates.
using GemmEpilogue = std::function<void(int64_t r0, int64_t rows, int64_t c0, int64_t cols)>;

// C[m, n] = (accumulate ? C : 0) + A[m, k] . B[k, n]; C row-major with leading dimension ldc.
void kernel_gemm(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                 bool accumulate, const GemmEpilogue* epilogue = nullptr);

// The same contract in plain scalar code: C[i,j] = fma(A[i,k-1], B[k-1,j], ... fma(A[i,0],
// B[0,j], C0)). Tests compare kernel_gemm with it bitwise.
void gemm_fma_reference(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                        bool accumulate);

// True when kernel_gemm runs the engine's micro-kernels at the current level (AVX2 or AVX-512);
// false at the baseline level, where it calls the BLAS library.
bool kernel_gemm_native();

}  // namespace sparsemoe
