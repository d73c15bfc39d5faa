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
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/ops/simd.h"

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

// The message of the exception f() throws, or "no error".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

// The SIMD levels this CPU runs, baseline first.
inline std::vector<SimdTarget> supported_levels() {
  std::vector<SimdTarget> v;
  for (SimdTarget t : {SimdTarget::kBaseline, SimdTarget::kAvx2, SimdTarget::kAvx512})
    if (simd_supported(t)) v.push_back(t);
  return v;
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

// Ridders' extrapolation of the derivative at 0 of f: central differences at steps h0, h0/2,
// h0/4, ... extrapolated in a Neville tableau (each column cancels the next power of h^2); the
// estimate with the smallest change between neighbouring entries wins, and the search stops once
// the tableau diagonal grows (float rounding noise taking over). Returns the derivative.
inline double ridders_derivative(const std::function<double(double)>& f, double h0,
                                 int levels = 6) {
  std::vector<std::vector<double>> a(levels, std::vector<double>(levels));
  double h = h0, best = 0, err = 1e300;
  for (int i = 0; i < levels; ++i, h /= 2) {
    a[0][i] = (f(h) - f(-h)) / (2 * h);
    if (i == 0) {
      best = a[0][0];
      continue;
    }
    double fac = 4;
    for (int j = 1; j <= i; ++j, fac *= 4) {
      a[j][i] = (a[j - 1][i] * fac - a[j - 1][i - 1]) / (fac - 1);
      const double e =
          std::max(std::fabs(a[j][i] - a[j - 1][i]), std::fabs(a[j][i] - a[j - 1][i - 1]));
      if (e <= err) err = e, best = a[j][i];
    }
    if (std::fabs(a[i][i] - a[i - 1][i - 1]) >= 2 * err) break;
  }
  return best;
}

// Checks `grad` along a random +-1 direction d over all of `param` at once, against Ridders'
// extrapolation of d/dt loss(param + t d). A deep float32 network's loss carries rounding noise of
// about 1e-6 and, with unnormalised mixing or attention, strong curvature, so no single step
// suits every parameter: per-element differences drown in the noise, while a direction over the
// whole tensor grows the signal with sqrt(numel) and the extrapolation removes the curvature.
inline void check_directional_gradient(const std::string& what, Tensor& param, const Tensor& grad,
                                       const std::function<double()>& loss, uint64_t seed,
                                       float h0 = 2e-2f, double rtol = 2e-2, double atol = 2e-4) {
  ASSERT_EQ(param.shape(), grad.shape()) << what;
  const int64_t n = param.numel();
  std::vector<float> d(n), orig(param.data(), param.data() + n);
  double an = 0;
  for (int64_t i = 0; i < n; ++i) {
    d[i] = uniform01(seed, i) < 0.5f ? -1.f : 1.f;
    an += static_cast<double>(grad[i]) * d[i];
  }
  auto along = [&](double t) {
    for (int64_t i = 0; i < n; ++i) param[i] = orig[i] + static_cast<float>(t) * d[i];
    const double l = loss();
    std::copy(orig.begin(), orig.end(), param.data());
    return l;
  };
  const double fd = ridders_derivative(along, h0);
  EXPECT_NEAR(an, fd, atol + rtol * std::max(std::fabs(fd), std::fabs(an))) << what;
}

// sum(y * r): a scalar loss whose gradient w.r.t. y is r.
inline double dot(const Tensor& y, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y[i]) * r[i];
  return s;
}

// Rank 0 of `size` processes that all do exactly what this one does: an allgather gives every
// rank this one's data, a broadcast leaves the data as it is. For checks that must refuse bad
// input before (or while agreeing on it) any exchange of rows; `collectives` counts the calls.
class MirrorRanks : public Communicator {
 public:
  explicit MirrorRanks(int size) : size_(size) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  std::string backend() const override { return "mirror"; }
  void barrier() override { ++collectives; }
  void broadcast(void*, int64_t, int) override { ++collectives; }
  void allgather(const void* send, int64_t bytes, void* recv) override {
    ++collectives;
    for (int r = 0; r < size_; ++r) std::memcpy(static_cast<char*>(recv) + r * bytes, send, bytes);
  }
  void exchange_counts(const int64_t*, int64_t*) override { ADD_FAILURE() << "exchange_counts"; }
  std::unique_ptr<CommRequest> start_alltoallv_at(const void*, const int64_t*, const int64_t*,
                                                  void*, const int64_t*, const int64_t*,
                                                  int64_t) override {
    ADD_FAILURE() << "start_alltoallv";
    return nullptr;
  }
  void sendrecv(const void*, void*, int64_t, int) override { ADD_FAILURE() << "sendrecv"; }
  int collectives = 0;

 private:
  int size_;
};

}  // namespace sparsemoe::test
