// Layer normalisation kernels (see layer_norm.h).
#include "sparsemoe/ops/layer_norm.h"

#include <cmath>

#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

void layer_norm_forward(const float* x, int64_t N, int64_t H, const float* gamma, const float* beta,
                        double eps, float* y, float* xhat, float* rstd) {
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* xr = x + n * H;
      double mean = 0, var = 0;
      for (int64_t h = 0; h < H; ++h) mean += xr[h];
      mean /= H;
      for (int64_t h = 0; h < H; ++h) var += (xr[h] - mean) * (xr[h] - mean);
      var /= H;
      const float rs = static_cast<float>(1.0 / std::sqrt(var + eps));
      rstd[n] = rs;
      for (int64_t h = 0; h < H; ++h) {
        const float xh = static_cast<float>(xr[h] - mean) * rs;
        xhat[n * H + h] = xh;
        y[n * H + h] = xh * gamma[h] + beta[h];
      }
    }
  });
}

void layer_norm_backward(const float* dy, const float* xhat, const float* rstd, const float* gamma,
                         int64_t N, int64_t H, float* dx, float* dgamma, float* dbeta) {
  // dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* g = dy + n * H;
      const float* xh = xhat + n * H;
      double m1 = 0, m2 = 0;
      for (int64_t h = 0; h < H; ++h) {
        const double d = static_cast<double>(g[h]) * gamma[h];
        m1 += d;
        m2 += d * xh[h];
      }
      m1 /= H, m2 /= H;
      for (int64_t h = 0; h < H; ++h)
        dx[n * H + h] = static_cast<float>(rstd[n] * (g[h] * gamma[h] - m1 - xh[h] * m2));
    }
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
