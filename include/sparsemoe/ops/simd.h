// Run-time choice of the instruction set for the hand-written vector kernels (ops/kernels.cc).
// The library is compiled for baseline x86-64, so one binary runs on any x86-64 CPU; each such
// kernel is compiled three times (x86-64, x86-64-v3 = AVX2 + FMA, x86-64-v4 = AVX-512) and the
// best level the CPU supports is used. SPARSEMOE_SIMD=baseline|avx2|avx512 in the environment, or
// set_simd_target(), selects a lower one (tests, benchmarks). Floating-point contraction is off
// everywhere (-ffp-contract=off), so the elementwise kernels give bitwise identical results at
// every level. The GEMM kernel (ops/gemm_kernel.h) needs FMA: AVX2 and AVX-512 give the same bits,
// and the baseline level, which has no FMA, calls the BLAS library and rounds differently.
#pragma once

#include <string>

namespace sparsemoe {

enum class SimdTarget { kBaseline, kAvx2, kAvx512 };

// The level the kernels use now.
SimdTarget simd_target();
// The best level this CPU supports.
SimdTarget simd_best_supported();
bool simd_supported(SimdTarget t);
// Throws InvalidArgument when the CPU lacks t.
void set_simd_target(SimdTarget t);
// "baseline (x86-64)", "avx2 (x86-64-v3)", "avx512 (x86-64-v4)".
std::string simd_target_name(SimdTarget t);
// "baseline", "avx2" or "avx512"; throws InvalidArgument naming `what` otherwise.
SimdTarget parse_simd_target(const std::string& name, const std::string& what);

}  // namespace sparsemoe
