// Counter-based initialisers (see init.h).
#include "sparsemoe/core/init.h"

#include <cmath>

#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"

namespace sparsemoe {

void fill_normal(Tensor& t, double stddev, uint64_t key, double truncate_at, int64_t index0) {
  float* d = t.data();
  parallel_for_range(t.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double z = 0;
      for (uint64_t attempt = 0;; ++attempt) {  // Box-Muller; resample outside the truncation
        const uint64_t c = (static_cast<uint64_t>(index0 + i) << 8 | attempt) * 2;
        const double u1 = (uniform01(key, c) + 0.5 / 16777216.0), u2 = uniform01(key, c + 1);
        z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        if (truncate_at <= 0 || std::fabs(z) < truncate_at || attempt == 255) break;
      }
      d[i] = static_cast<float>(z * stddev);
    }
  });
}

void fill_truncated_normal(Tensor& t, double stddev, uint64_t key, int64_t index0) {
  fill_normal(t, stddev, key, 2.0, index0);
}

}  // namespace sparsemoe
