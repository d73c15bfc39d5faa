// The engine's own single-threaded GEMM: register-blocked micro-kernels for AVX2+FMA (6 x 16) and
// AVX-512 (14 x 32), chosen at run time (ops/simd.h), over panels packed into cache-sized buffers
// as they are used. Every output element is one fused multiply-add chain over k in the order
// 0..k-1, started from 0 (or from C when accumulating), so the result is bitwise the same at AVX2
// and AVX-512, for any blocking, and equal to gemm_fma_reference. The baseline level (no FMA)
// calls the BLAS library instead and rounds differently.
//
// Operands are given by strides, so transposed operands (W^T in the backward, X^T in weight
// gradients) need no copies of their own: they are gathered into the packed panels (A always, B
// unless it is read in place, below). Weights are packed as they are used, into cache-sized
// buffers, once per call and row block of 512 (fewer rows when k is long: a thread's packed A block
// is bounded to 4 MiB): in a training step that is once per weight and direction, and the packing
// never goes through memory. When the rows are few (decode, a few tokens per expert) and B is
// row-major, B is read in place, whole rows at a time (the GEMV case), unless it was packed
// beforehand (below). An epilogue called on each finished output block, while it is still in cache,
// fuses bias, activation and dropout into the write-out. For inference, where the same weights
// serve every batch, they can be packed once (PackedWeights) and the calls then read the packed
// panels instead of packing them again.
#pragma once

#include <cstdint>
#include <functional>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/ops/simd.h"

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
// `packed_b`, when not null, is B already packed (PackedWeights::panels for this call's first
// column): the call reads it instead of packing B, also when the rows are few (2 to 32). B itself
// is still needed: a call with one row reads B in place, whole rows at a time (as fast as the
// panels or faster there, on an AMD EPYC Zen 3).
void kernel_gemm(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                 bool accumulate, const GemmEpilogue* epilogue = nullptr,
                 const float* packed_b = nullptr);

// A weight gradient, C[m, n] = (accumulate ? C : 0) + A^T . B with A [k, m] and B [k, n]
// row-major (lda, ldb): kernel_gemm with a transposed A, the same bits. Over a few rows (k: the
// tokens an expert got, up to 32 at AVX-512 and 16 at AVX2) C is most of the traffic, and it is
// computed R rows at a time across all columns so that it streams front to back; a C that is
// written, not accumulated, goes out with non-temporal stores (the optimizer reads it after the
// whole backward, so caching it would only evict what the backward still reads).
void weight_grad_gemm(int64_t m, int64_t n, int64_t k, const float* at, int64_t lda, const float* b,
                      int64_t ldb, float* c, int64_t ldc, bool accumulate);

// Weights packed once into the current level's panel layout, for calls that would otherwise pack
// them on every call and 512-row tile (inference: the same weights serve every batch; about 5% of
// a dense layer's time at 2048 rows). `groups` matrices B [k, n], row-major with leading dimension
// n and `group_stride` floats apart (an expert stack), each as panels of nr columns (32 at
// AVX-512, 16 at AVX2), panel t holding columns [t*nr, t*nr + nr) for every k ([k][nr], zero past
// n). It is a copy: one more copy of the weights in memory, and it does not follow later writes to
// them. The layers that keep one (Dense, FfnWeights) drop it whenever their weights may change.
class PackedWeights {
 public:
  void pack(int64_t groups, int64_t k, int64_t n, const float* w, int64_t group_stride);
  void clear();
  bool empty() const { return groups_ == 0; }
  int64_t bytes() const { return data_.numel() * 4; }
  // Group g's panels from column c0 on, for kernel_gemm's `packed_b` in a call whose inner
  // dimension is k; null when they cannot serve that call: nothing packed, another k, another
  // SIMD level current now than at packing, or c0 not on a panel boundary.
  const float* panels(int64_t g, int64_t c0, int64_t k) const;

 private:
  Tensor data_;  // [groups, panels, k, nr]
  int64_t groups_ = 0, k_ = 0, n_ = 0, nr_ = 0;
  SimdTarget level_ = SimdTarget::kBaseline;
};

// The same contract in plain scalar code: C[i,j] = fma(A[i,k-1], B[k-1,j], ... fma(A[i,0],
// B[0,j], C0)). Tests compare kernel_gemm with it bitwise.
void gemm_fma_reference(int64_t m, int64_t n, int64_t k, MatRef a, MatRef b, float* c, int64_t ldc,
                        bool accumulate);

// True when kernel_gemm runs the engine's micro-kernels at the current level (AVX2 or AVX-512);
// false at the baseline level, where it calls the BLAS library.
bool kernel_gemm_native();

}  // namespace sparsemoe
