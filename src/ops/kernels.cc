// Elementwise kernels (see kernels.h). The vector kernels (activation_forward / _backward) are
// written once as plain loops over always-inlined scalar maths and compiled three times, for
// x86-64, x86-64-v3 and x86-64-v4; simd.h picks one at run time. The maths uses only selects,
// multiplies, adds and bit casts, with no libm calls, so GCC vectorises it at every level (it needs
// -fno-trapping-math to if-convert the selects without AVX-512 masks). Contraction is off: a
// kernel fuses a multiply-add only where it says so (mul_add: the activations at the FMA levels),
// so the AVX2 and AVX-512 levels compute the same bits, and every kernel but the activations
// computes those bits at the baseline level too.
#include "sparsemoe/ops/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "levels.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"

namespace sparsemoe {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
}  // namespace

float activate(Activation a, float x) {
  switch (a) {
    case Activation::kRelu:
      return x > 0.f ? x : 0.f;
    case Activation::kGelu:
      return 0.5f * x * (1.f + std::erf(x * kInvSqrt2));
    case Activation::kGeluTanh: {
      const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.f + std::tanh(u));
    }
    case Activation::kLinear:
      return x;
    case Activation::kTanh:
      return std::tanh(x);
  }
  return x;
}

float activate_grad(Activation a, float x) {
  switch (a) {
    case Activation::kRelu:
      return x > 0.f ? 1.f : 0.f;
    case Activation::kGelu:
      return 0.5f * (1.f + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
    case Activation::kGeluTanh: {
      const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
      const float t = std::tanh(u);
      const float du = kSqrt2OverPi * (1.f + 3.f * 0.044715f * x * x);
      return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
    }
    case Activation::kLinear:
      return 1.f;
    case Activation::kTanh: {
      const float t = std::tanh(x);
      return 1.f - t * t;
    }
  }
  return 1.f;
}

namespace {

// a * b + c. At the FMA levels (x86-64-v3, -v4) one fused multiply-add, rounded once: the GELU
// and exp maths below then take half the instructions (GELU-tanh forward 1.13 -> 0.51 ns a value
// at AVX-512 on a Xeon, Emerald Rapids). The baseline level has no FMA instruction (libm's
// software fmaf cost 25x the whole GELU there), so it multiplies and adds, rounding twice: its
// results agree with the FMA levels to rounding, and the two FMA levels agree bit for bit.
template <bool kFma>
[[gnu::always_inline]] inline float mul_add(float a, float b, float c) {
  if constexpr (kFma)
    return std::fma(a, b, c);
  else
    return a * b + c;
}

// exp(x) for x in float range: x = n*ln2 + r, |r| <= ln2/2, exp(r) by a degree-6 polynomial,
// scaled by 2^n through the exponent bits. Only selects, FMAs and bit casts (no libm calls), so
// GCC vectorises the calling loops; the rounding uses the 1.5*2^23 trick (round to nearest even).
template <bool kFma>
[[gnu::always_inline]] inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23
  const float n = mul_add<kFma>(x, 1.44269504088896341f, kRound) - kRound;
  const float r = mul_add<kFma>(n, 2.12194440e-4f, mul_add<kFma>(n, -0.693359375f, x));
  float p = 1.9875691500e-4f;
  p = mul_add<kFma>(p, r, 1.3981999507e-3f);
  p = mul_add<kFma>(p, r, 8.3334519073e-3f);
  p = mul_add<kFma>(p, r, 4.1665795894e-2f);
  p = mul_add<kFma>(p, r, 1.6666665459e-1f);
  p = mul_add<kFma>(p, r, 5.0000001201e-1f);
  p = mul_add<kFma>(p * r, r, r) + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

[[gnu::always_inline]] inline float abs_of(float x) { return x < 0.f ? -x : x; }

template <bool kFma>
[[gnu::always_inline]] inline float fast_tanh(float u) {
  const float e = fast_exp<kFma>(-2.f * abs_of(u));
  const float t = (1.f - e) / (1.f + e);
  return u < 0.f ? -t : t;
}

// Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7).
template <bool kFma>
[[gnu::always_inline]] inline float fast_erf(float x) {
  const float ax = abs_of(x);
  const float t = 1.f / mul_add<kFma>(0.3275911f, ax, 1.f);
  float poly = mul_add<kFma>(t, 1.061405429f, -1.453152027f);
  poly = mul_add<kFma>(t, poly, 1.421413741f);
  poly = mul_add<kFma>(t, poly, -0.284496736f);
  poly = mul_add<kFma>(t, poly, 0.254829592f);
  const float v = 1.f - poly * t * fast_exp<kFma>(-ax * ax);
  return x < 0.f ? -v : v;
}

// GELU-tanh's 0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3), as x * s with
// s = sigmoid(2u) = 1 / (1 + exp(-2u)): the same function, without tanh's sign handling.
template <bool kFma>
[[gnu::always_inline]] inline float gelu_tanh_sigmoid(float x) {
  const float x2 = x * x;
  const float two_u = (2.f * kSqrt2OverPi) * mul_add<kFma>(0.044715f * x2, x, x);
  return 1.f / (1.f + fast_exp<kFma>(-two_u));
}

// a[i] = act(h[i]); h and a are one array (in place) or disjoint, so no restrict: every loop is
// `omp simd`, which vectorises it regardless, and each element is read before its own store.
template <bool kFma>
[[gnu::always_inline]] inline void forward_body(Activation act, const float* h, float* a,
                                                int64_t n) {
  switch (act) {
    case Activation::kRelu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = h[i] > 0.f ? h[i] : 0.f;
      return;
    case Activation::kGelu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = 0.5f * h[i] * (1.f + fast_erf<kFma>(h[i] * kInvSqrt2));
      return;
    case Activation::kGeluTanh:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = h[i] * gelu_tanh_sigmoid<kFma>(h[i]);
      return;
    case Activation::kLinear:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = h[i];
      return;
    case Activation::kTanh:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = fast_tanh<kFma>(h[i]);
      return;
  }
}

template <bool kFma>
[[gnu::always_inline]] inline void backward_body(Activation act, const float* __restrict h,
                                                 const float* da, float* dh, int64_t n) {
  switch (act) {
    case Activation::kRelu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dh[i] = h[i] > 0.f ? da[i] : 0.f;
      return;
    case Activation::kGelu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float x = h[i];
        const float g = mul_add<kFma>(x * kInvSqrt2Pi, fast_exp<kFma>(-0.5f * x * x),
                                      0.5f * (1.f + fast_erf<kFma>(x * kInvSqrt2)));
        dh[i] = da[i] * g;
      }
      return;
    case Activation::kGeluTanh:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        // d(x s)/dx = s + x * s (1 - s) * d(2u)/dx, s = sigmoid(2u).
        const float x = h[i];
        const float s = gelu_tanh_sigmoid<kFma>(x);
        const float d2u = (2.f * kSqrt2OverPi) * mul_add<kFma>(3.f * 0.044715f * x, x, 1.f);
        dh[i] = da[i] * mul_add<kFma>(x * s * (1.f - s), d2u, s);
      }
      return;
    case Activation::kLinear:
      for (int64_t i = 0; i < n; ++i) dh[i] = da[i];
      return;
    case Activation::kTanh:
      for (int64_t i = 0; i < n; ++i) {
        const float t = fast_tanh<kFma>(h[i]);
        dh[i] = da[i] * (1.f - t * t);
      }
      return;
  }
}

// exp(x) for x <= 0 that is 0 below float's normal range, as libm's is (to within denormals): a
// masked key's probability is then exactly 0. fast_exp clamps there instead.
[[gnu::always_inline]] inline float softmax_exp(float x) {
  return x < -87.3f ? 0.f : fast_exp<false>(x);
}

// Softmax of scale * x over each row, masked scores set to `masked`; the maximum and the sum in
// fixed lanes (levels.h), so vectorising at any width gives the same bits.
[[gnu::always_inline]] inline void softmax_body(float* x, int64_t rows, int64_t n, int64_t ld,
                                                float scale, const float* mask, int64_t mask_ld,
                                                float masked) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict row = x + r * ld;
    if (mask) {
      const float* __restrict mrow = mask + r * mask_ld;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] = mrow[j] == 0.f ? masked : scale * row[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) row[j] = scale * row[j];
    }
    const float m = lane_max(row, n);
    const float sum =
        lane_sum<float>(n, [&](int64_t j) { return row[j] = softmax_exp(row[j] - m); });
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  }
}

// out[i] = in[i] * keep_scale where element index0 + i of the dropout stream is kept, else 0;
// integer hashing and one multiply, so every level gives the same bits (dropout_keep's rule).
[[gnu::always_inline]] inline void dropout_body(uint64_t key, uint64_t index0, float rate,
                                                float keep_scale, const float* in, float* out,
                                                int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t h = mix64(key ^ mix64(index0 + static_cast<uint64_t>(i)));
    const float u = static_cast<float>(static_cast<int32_t>(h >> 40)) * (1.0f / 16777216.0f);
    out[i] = u >= rate ? in[i] * keep_scale : 0.f;
  }
}

// The softmax backward of one row, in place: ds = scale * (pd * ds - p * dot) with dot = sum of
// pd * ds, i.e. P * (dP - rowsum(dP * P)) for dP = dPd through the dropout mask (pd = P after
// dropout carries the mask and its scale; pd = p without dropout). dot sums exact double products
// in 16 fixed lanes; masked entries (mask 0) get 0.
[[gnu::always_inline]] inline void softmax_backward_body(const float* __restrict p,
                                                         const float* __restrict pd,
                                                         float* __restrict ds, int64_t n,
                                                         float scale,
                                                         const float* __restrict mask) {
  const float dot = static_cast<float>(lane_sum<double>(
      n, [&](int64_t j) { return static_cast<double>(pd[j]) * static_cast<double>(ds[j]); }));
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) ds[j] = scale * (pd[j] * ds[j] - p[j] * dot);
  if (mask) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) ds[j] = mask[j] == 0.f ? 0.f : ds[j];
  }
}

// logsumexp of z [n] (its maximum plus the log of exp sums in 16 fixed double lanes) and, when d
// is not null, d[c] = s * exp(z[c] - lse): a cross-entropy row and its gradient.
[[gnu::always_inline]] inline float lse_body(const float* __restrict z, int64_t n, float s,
                                             float* __restrict d) {
  const float m = lane_max(z, n);
  const double sum =
      lane_sum<double>(n, [&](int64_t j) { return static_cast<double>(softmax_exp(z[j] - m)); });
  const float lse = m + static_cast<float>(std::log(sum));
  if (d) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d[j] = s * softmax_exp(z[j] - lse);
  }
  return lse;
}

// adamw_update's element rule, in the order the scalar loop it replaced used (same bits).
[[gnu::always_inline]] inline void adamw_body(float* __restrict w, const float* __restrict g,
                                              float* __restrict m, float* __restrict v, int64_t n,
                                              const AdamWScalars& s) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * s.clip;
    m[i] = s.beta1 * m[i] + s.one_minus_beta1 * gi;
    v[i] = s.beta2 * v[i] + s.one_minus_beta2 * gi * gi;
    w[i] = w[i] * s.keep - s.step_size * m[i] / (std::sqrt(v[i] * s.inv_c2) + s.eps);
  }
}

// The three compilations of each body (levels.h); the activations fuse multiply-adds at the FMA
// levels (mul_add).
constexpr bool kFma_baseline = false, kFma_avx2 = true, kFma_avx512 = true;
#define SPARSEMOE_DEFINE_LEVEL(name, attr)                                                 \
  attr void forward_##name(Activation act, const float* h, float* a, int64_t n) {          \
    forward_body<kFma_##name>(act, h, a, n);                                               \
  }                                                                                        \
  attr void backward_##name(Activation act, const float* h, const float* da, float* dh,    \
                            int64_t n) {                                                   \
    backward_body<kFma_##name>(act, h, da, dh, n);                                         \
  }                                                                                        \
  attr void softmax_##name(float* x, int64_t rows, int64_t n, int64_t ld, float scale,     \
                           const float* mask, int64_t mask_ld, float masked) {             \
    softmax_body(x, rows, n, ld, scale, mask, mask_ld, masked);                            \
  }                                                                                        \
  attr void dropout_##name(uint64_t key, uint64_t index0, float rate, float keep_scale,    \
                           const float* in, float* out, int64_t n) {                       \
    dropout_body(key, index0, rate, keep_scale, in, out, n);                               \
  }                                                                                        \
  attr void softmax_backward_##name(const float* p, const float* pd, float* ds, int64_t n, \
                                    float scale, const float* mask) {                      \
    softmax_backward_body(p, pd, ds, n, scale, mask);                                      \
  }                                                                                        \
  attr float lse_##name(const float* z, int64_t n, float s, float* d) {                    \
    return lse_body(z, n, s, d);                                                           \
  }                                                                                        \
  attr void adamw_##name(float* w, const float* g, float* m, float* v, int64_t n,          \
                         const AdamWScalars& s) {                                          \
    adamw_body(w, g, m, v, n, s);                                                          \
  }
SPARSEMOE_LEVELS(SPARSEMOE_DEFINE_LEVEL)
#undef SPARSEMOE_DEFINE_LEVEL

}  // namespace

void activation_forward(Activation act, const float* h, float* a, int64_t n) {
  at_level(forward_baseline, forward_avx2, forward_avx512)(act, h, a, n);
}

void activation_in_place(Activation act, float* x, int64_t n) {
  if (act == Activation::kLinear) return;
  // The same kernel with both operands one array (forward_body allows it). Through a copy in L1
  // to a distinct array instead, as before, the MoE layer's inference at 4096 tokens ran 2-3%
  // slower (in-process alternation, Xeon Emerald Rapids, one and two threads, AVX-512 and AVX2).
  activation_forward(act, x, x, n);
}

void activation_backward(Activation act, const float* h, const float* da, float* dh, int64_t n) {
  at_level(backward_baseline, backward_avx2, backward_avx512)(act, h, da, dh, n);
}

void softmax_rows_scaled(float* x, int64_t rows, int64_t n, int64_t ld, float scale,
                         const float* mask, int64_t mask_ld, float masked) {
  if (n > 0)
    at_level(softmax_baseline, softmax_avx2, softmax_avx512)(x, rows, n, ld, scale, mask, mask_ld,
                                                             masked);
}

void dropout_span(uint64_t key, uint64_t index0, float rate, const float* in, float* out,
                  int64_t n) {
  at_level(dropout_baseline, dropout_avx2, dropout_avx512)(key, index0, rate, dropout_scale(rate),
                                                           in, out, n);
}

void softmax_backward_row(const float* p, const float* pd, float* ds, int64_t n, float scale,
                          const float* mask) {
  at_level(softmax_backward_baseline, softmax_backward_avx2, softmax_backward_avx512)(p, pd, ds, n,
                                                                                      scale, mask);
}

float logsumexp_and_softmax(const float* z, int64_t n, float s, float* d) {
  if (n <= 0) return -INFINITY;
  return at_level(lse_baseline, lse_avx2, lse_avx512)(z, n, s, d);
}

void softmax_rows(float* x, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * n;
    const float m = *std::max_element(row, row + n);
    float sum = 0.f;
    for (int64_t i = 0; i < n; ++i) sum += (row[i] = std::exp(row[i] - m));
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < n; ++i) row[i] *= inv;
  }
}

float logsumexp(const float* x, int64_t n) {
  const float m = *std::max_element(x, x + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i] - m));
  return m + static_cast<float>(std::log(sum));
}

void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s) {
  at_level(adamw_baseline, adamw_avx2, adamw_avx512)(w, g, m, v, n, s);
}

float dropout_scale(float rate) { return rate > 0.f ? 1.f / (1.f - rate) : 1.f; }

}  // namespace sparsemoe
