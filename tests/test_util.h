// Test helpers: deterministic random tensors, normalised error, and a finite-difference gradient
// checker over any scalar loss (the ggml test-backend-ops pattern).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "sparsemoe/core/rng.h"
#include "sparsemoe/core/tensor.h"

namespace sparsemoe::test {

inline Tensor random_tensor(Shape shape, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  Tensor t(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = lo + (hi - lo) * uniform01(seed, i);
  return t;
}

// max |a - b| / max(max |b|, 1e-6): the normalised error used to compare paths.
inline double normalized_error(const float* a, const float* b, int64_t n) {
  double num = 0, den = 1e-6;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, static_cast<double>(std::fabs(a[i] - b[i])));
    den = std::max(den, static_cast<double>(std::fabs(b[i])));
  }
  return num / den;
}
inline double normalized_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  return normalized_error(a.data(), b.data(), std::min(a.numel(), b.numel()));
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() &&
         std::equal(a.data(), a.data() + a.numel(), b.data(),
                    [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; });
}

// Checks analytic gradient `grad` of loss() w.r.t. the elements of `param` by central
// differences at up to `samples` evenly spaced elements. loss() must recompute from scratch.
inline void check_gradient(const std::string& what, Tensor& param, const Tensor& grad,
                           const std::function<double()>& loss, int samples = 24, float eps = 1e-3f,
                           double rtol = 2e-2, double atol = 2e-4) {
  ASSERT_EQ(param.shape(), grad.shape()) << what;
  const int64_t n = param.numel();
  const int64_t stride = std::max<int64_t>(1, n / samples);
  int checked = 0;
  for (int64_t i = 0; i < n; i += stride) {
    const float orig = param[i];
    param[i] = orig + eps;
    const double lp = loss();
    param[i] = orig - eps;
    const double lm = loss();
    param[i] = orig;
    const double fd = (lp - lm) / (2.0 * eps);
    const double an = grad[i];
    EXPECT_NEAR(an, fd, atol + rtol * std::max(std::fabs(fd), std::fabs(an)))
        << what << " element " << i;
    ++checked;
  }
  EXPECT_GT(checked, 0) << what;
}

// sum(y * r): a scalar loss whose gradient w.r.t. y is r.
inline double dot(const Tensor& y, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y[i]) * r[i];
  return s;
}

}  // namespace sparsemoe::test
