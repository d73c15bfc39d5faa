// LayerNorm forward/backward (see layer_norm.h).
#include "sparsemoe/layers/layer_norm.h"

#include <cmath>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"

namespace sparsemoe {

LayerNorm::LayerNorm(int64_t hidden, double epsilon)
    : gamma({hidden}, 1.f),
      beta({hidden}),
      gamma_grad({hidden}),
      beta_grad({hidden}),
      H_(hidden),
      eps_(epsilon) {
  check_arg(hidden >= 1, "LayerNorm: hidden size must be >= 1, got " + std::to_string(hidden));
  check_arg(epsilon >= 0, "LayerNorm: epsilon must be >= 0");
}

void LayerNorm::forward(const Tensor& x, Tensor& y) {
  check_arg(x.rank() >= 1 && x.dim(-1) == H_,
            "LayerNorm input: expected shape [..., H=" + std::to_string(H_) + "], got " +
                shape_str(x.shape()));
  const int64_t N = x.numel() / H_, H = H_;
  y.resize(x.shape());
  xhat_.resize({N, H});
  rstd_.resize(N);
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* xr = x.data() + n * H;
      double mean = 0, var = 0;
      for (int64_t h = 0; h < H; ++h) mean += xr[h];
      mean /= H;
      for (int64_t h = 0; h < H; ++h) var += (xr[h] - mean) * (xr[h] - mean);
      var /= H;
      const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps_));
      rstd_[n] = rstd;
      for (int64_t h = 0; h < H; ++h) {
        const float xh = static_cast<float>(xr[h] - mean) * rstd;
        xhat_[n * H + h] = xh;
        y[n * H + h] = xh * gamma[h] + beta[h];
      }
    }
  });
}

void LayerNorm::backward(const Tensor& dy, Tensor& dx) {
  const int64_t H = H_, N = static_cast<int64_t>(rstd_.size());
  check_arg(
      dy.numel() == N * H,
      "LayerNorm dy: expected the shape of the last forward input, got " + shape_str(dy.shape()));
  dx.resize(dy.shape());
  // dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
  parallel_for_range(N, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* g = dy.data() + n * H;
      const float* xh = xhat_.data() + n * H;
      double m1 = 0, m2 = 0;
      for (int64_t h = 0; h < H; ++h) {
        const double d = static_cast<double>(g[h]) * gamma[h];
        m1 += d;
        m2 += d * xh[h];
      }
      m1 /= H, m2 /= H;
      for (int64_t h = 0; h < H; ++h)
        dx[n * H + h] = static_cast<float>(rstd_[n] * (g[h] * gamma[h] - m1 - xh[h] * m2));
    }
  });
  // Parameter gradients: sums over rows in a fixed order, parallel over columns.
  parallel_for_range(H, 64, [&](int64_t b, int64_t e) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = b; h < e; ++h) {
        gamma_grad[h] += dy[n * H + h] * xhat_[n * H + h];
        beta_grad[h] += dy[n * H + h];
      }
  });
}

}  // namespace sparsemoe
