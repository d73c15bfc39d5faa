// Layer normalisation kernels (see layer_norm.h). The row bodies are compiled per SIMD level
// (levels.h); their means and variances are double sums in 16 fixed lanes, so every level gives
// the same bits, and rows are independent, so the thread count does not matter either.
#include "sparsemoe/ops/layer_norm.h"

#include <cmath>

#include "levels.h"
#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

namespace {

[[gnu::always_inline]] inline void forward_rows(const float* __restrict x, int64_t rows, int64_t H,
                                                const float* __restrict gamma,
                                                const float* __restrict beta, double eps,
                                                float* __restrict y, float* __restrict xhat,
                                                float* __restrict rstd) {
  for (int64_t n = 0; n < rows; ++n) {
    const float* xr = x + n * H;
    const double mean =
        lane_sum<double>(H, [&](int64_t h) { return static_cast<double>(xr[h]); }) / H;
    const double var = lane_sum<double>(H,
                                        [&](int64_t h) {
                                          const double d = xr[h] - mean;
                                          return d * d;
                                        }) /
                       H;
    const float rs = static_cast<float>(1.0 / std::sqrt(var + eps));
    rstd[n] = rs;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const float xh = static_cast<float>(xr[h] - mean) * rs;
      xhat[n * H + h] = xh;
      y[n * H + h] = xh * gamma[h] + beta[h];
    }
  }
}

// dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
[[gnu::always_inline]] inline void backward_rows(const float* __restrict dy,
                                                 const float* __restrict xhat,
                                                 const float* __restrict rstd,
                                                 const float* __restrict gamma, int64_t rows,
                                                 int64_t H, float* __restrict dx) {
  for (int64_t n = 0; n < rows; ++n) {
    const float* g = dy + n * H;
    const float* xh = xhat + n * H;
    const double m1 =
        lane_sum<double>(H, [&](int64_t h) { return static_cast<double>(g[h]) * gamma[h]; }) / H;
    const double m2 =
        lane_sum<double>(H,
                         [&](int64_t h) { return static_cast<double>(g[h]) * gamma[h] * xh[h]; }) /
        H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h)
      dx[n * H + h] = static_cast<float>(rstd[n] * (g[h] * gamma[h] - m1 - xh[h] * m2));
  }
}

#define SPARSEMOE_DEFINE_LEVEL(name, attr)                                                      \
  attr void forward_##name(const float* x, int64_t rows, int64_t H, const float* gamma,         \
                           const float* beta, double eps, float* y, float* xhat, float* rstd) { \
    forward_rows(x, rows, H, gamma, beta, eps, y, xhat, rstd);                                  \
  }                                                                                             \
  attr void backward_##name(const float* dy, const float* xhat, const float* rstd,              \
                            const float* gamma, int64_t rows, int64_t H, float* dx) {           \
    backward_rows(dy, xhat, rstd, gamma, rows, H, dx);                                          \
  }
SPARSEMOE_LEVELS(SPARSEMOE_DEFINE_LEVEL)
#undef SPARSEMOE_DEFINE_LEVEL

}  // namespace

void layer_norm_forward(const float* x, int64_t N, int64_t H, const float* gamma, const float* beta,
                        double eps, float* y, float* xhat, float* rstd) {
  auto* rows = at_level(forward_baseline, forward_avx2, forward_avx512);
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    rows(x + b * H, e - b, H, gamma, beta, eps, y + b * H, xhat + b * H, rstd + b);
  });
}

void layer_norm_backward(const float* dy, const float* xhat, const float* rstd, const float* gamma,
                         int64_t N, int64_t H, float* dx, float* dgamma, float* dbeta) {
  auto* rows = at_level(backward_baseline, backward_avx2, backward_avx512);
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    rows(dy + b * H, xhat + b * H, rstd + b, gamma, e - b, H, dx + b * H);
  });
  // Parameter gradients: sums over rows in a fixed order, parallel over columns.
  parallel_for_range(H, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = b; h < e; ++h) {
        dgamma[h] += dy[n * H + h] * xhat[n * H + h];
        dbeta[h] += dy[n * H + h];
      }
  });
}

}  // namespace sparsemoe
