// Private to ops/: how a vector kernel is compiled once per instruction-set level and chosen at run
// time (ops/simd.h). A kernel body is an always-inlined function of plain loops; SPARSEMOE_LEVELS
// instantiates a wrapper per level (x86-64, x86-64-v3 = AVX2 + FMA, x86-64-v4 = AVX-512), and
// at_level picks the wrapper for the level in use. With contraction off (-ffp-contract=off) and
// reductions written in fixed lanes, every level computes the same bits.
#pragma once

#include "sparsemoe/ops/simd.h"

// X(name, attributes) for each level.
#define SPARSEMOE_LEVELS(X)                          \
  X(baseline, )                                      \
  X(avx2, __attribute__((target("arch=x86-64-v3")))) \
  X(avx512, __attribute__((target("arch=x86-64-v4"))))

namespace sparsemoe {

// The compilation of a kernel for the level in use.
template <class Fn>
Fn* at_level(Fn* baseline, Fn* avx2, Fn* avx512) {
  switch (simd_target()) {
    case SimdTarget::kAvx512:
      return avx512;
    case SimdTarget::kAvx2:
      return avx2;
    case SimdTarget::kBaseline:
      break;
  }
  return baseline;
}

}  // namespace sparsemoe
