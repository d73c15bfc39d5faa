// Private to ops/: how a vector kernel is compiled once per instruction-set level and chosen at run
// time (ops/simd.h). A kernel body is an always-inlined function of plain loops; SPARSEMOE_LEVELS
// instantiates a wrapper per level (x86-64, x86-64-v3 = AVX2 + FMA, x86-64-v4 = AVX-512), and
// at_level picks the wrapper for the level in use. With contraction off (-ffp-contract=off) and
// reductions written in fixed lanes (lane_sum, lane_max), every level computes the same bits.
#pragma once

#include <cstdint>

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

// Reductions in kLanes fixed lanes: element j goes to lane j % kLanes, each lane is summed in
// order and the lanes are then added pairwise, so the compiler may vectorise at any width and the
// bits do not change.
inline constexpr int kLanes = 16;

// The sum of f(j) over j < n, accumulated in T.
template <class T, class F>
[[gnu::always_inline]] inline T lane_sum(int64_t n, F f) {
  const int64_t full = n / kLanes * kLanes;
  T acc[kLanes] = {};
  for (int64_t j = 0; j < full; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += f(j + l);
  for (int64_t j = full; j < n; ++j) acc[j - full] += f(j);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// The largest of x[0..n), n >= 1 (exact in any order; written in lanes so that it vectorises).
[[gnu::always_inline]] inline float lane_max(const float* x, int64_t n) {
  const int64_t full = n / kLanes * kLanes;
  float mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = x[0];
  for (int64_t j = 0; j < full; j += kLanes)
    for (int l = 0; l < kLanes; ++l) mx[l] = x[j + l] > mx[l] ? x[j + l] : mx[l];
  float m = x[0];
  for (int l = 0; l < kLanes; ++l) m = mx[l] > m ? mx[l] : m;
  for (int64_t j = full; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

}  // namespace sparsemoe
