// The kernels' instruction-set level (see simd.h): detected once, overridable.
#include "sparsemoe/ops/simd.h"

#include <atomic>
#include <cstdlib>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

namespace {

SimdTarget detect() {
  // The features of x86-64-v3 / -v4 by name (clang 14 knows no level names here; every CPU with
  // these also has the level's smaller features: movbe, lzcnt, xsave).
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  if (v4) return SimdTarget::kAvx512;
  if (v3) return SimdTarget::kAvx2;
  return SimdTarget::kBaseline;
}

// The level in use, chosen on first use from the CPU and SPARSEMOE_SIMD.
std::atomic<SimdTarget>& current() {
  static std::atomic<SimdTarget> t = [] {
    SimdTarget best = detect();
    if (const char* env = std::getenv("SPARSEMOE_SIMD"); env && *env) {
      const SimdTarget want = parse_simd_target(env, "SPARSEMOE_SIMD");
      check_arg(want <= best, "SPARSEMOE_SIMD: this CPU supports at most " +
                                  simd_target_name(best) + ", got '" + env + "'");
      best = want;
    }
    return best;
  }();
  return t;
}

}  // namespace

SimdTarget simd_best_supported() {
  static const SimdTarget best = detect();
  return best;
}

bool simd_supported(SimdTarget t) { return t <= simd_best_supported(); }

SimdTarget simd_target() { return current().load(std::memory_order_relaxed); }

void set_simd_target(SimdTarget t) {
  check_arg(simd_supported(t), "set_simd_target: this CPU supports at most " +
                                   simd_target_name(simd_best_supported()) + ", got " +
                                   simd_target_name(t));
  current().store(t, std::memory_order_relaxed);
}

std::string simd_target_name(SimdTarget t) {
  switch (t) {
    case SimdTarget::kBaseline:
      return "baseline (x86-64)";
    case SimdTarget::kAvx2:
      return "avx2 (x86-64-v3)";
    case SimdTarget::kAvx512:
      return "avx512 (x86-64-v4)";
  }
  return "?";
}

SimdTarget parse_simd_target(const std::string& name, const std::string& what) {
  if (name == "baseline") return SimdTarget::kBaseline;
  if (name == "avx2") return SimdTarget::kAvx2;
  if (name == "avx512") return SimdTarget::kAvx512;
  throw InvalidArgument(what + ": expected baseline, avx2 or avx512, got '" + name + "'");
}

}  // namespace sparsemoe
