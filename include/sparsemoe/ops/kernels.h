// Elementwise and row-wise kernels shared by the layers: softmax, activations with their
// derivatives, and dropout driven by the counter-based RNG.
#pragma once

#include <cstdint>
#include <string>

#include "sparsemoe/core/config_io.h"

namespace sparsemoe {

enum class Activation { kRelu, kGelu, kGeluTanh, kLinear, kTanh };

// "relu", "gelu" (exact, erf), "gelu_tanh" (tanh approximation), "linear", "tanh".
inline constexpr EnumNames<Activation, 5> kActivations{
    {"relu", "gelu", "gelu_tanh", "linear", "tanh"}};
inline Activation parse_activation(const std::string& name) {
  return kActivations.parse(name, "activation");
}
inline std::string activation_name(Activation a) { return kActivations(a); }

float activate(Activation a, float x);
// d act(x) / dx, evaluated at the pre-activation x.
float activate_grad(Activation a, float x);

// Vectorised activation over a span, for the fast paths: a[i] = act(h[i]) and
// dh[i] = da[i] * act'(h[i]). exp is a range-reduced polynomial (about 2 ulp), erf the
// Abramowitz-Stegun 7.1.26 form (|error| < 1.5e-7); activate()/activate_grad() above use the
// C library and serve as the reference these are tested against.
void activation_forward(Activation act, const float* h, float* a, int64_t n);
void activation_backward(Activation act, const float* h, const float* da, float* dh, int64_t n);
// x = act(x) in place, the same bits as activation_forward.
void activation_in_place(Activation act, float* x, int64_t n);

// In-place softmax over each of `rows` rows of length `n` (float32, max-subtracted).
void softmax_rows(float* x, int64_t rows, int64_t n);
// The vectorised softmax attention uses: each of `rows` rows (leading dimension ld) becomes
// softmax(scale * x), except that where mask (same shape, leading dimension mask_ld; null: none)
// is 0 the score is `masked` before the softmax. exp is the activations' polynomial and the sum
// runs in 16 fixed lanes, so every SIMD level gives the same bits; softmax_rows is its reference.
void softmax_rows_scaled(float* x, int64_t rows, int64_t n, int64_t ld, float scale,
                         const float* mask, int64_t mask_ld, float masked);
// Its backward for one row of length n, in place: ds (dPd on entry, the gradient that reached
// the dropped probabilities) becomes scale * P * (dP - rowsum(dP * P)) with dP = dPd through the
// dropout mask, computed as scale * (pd * ds - p * dot), dot = sum(pd * ds), where pd is P after
// dropout (pd = p without it); zero where mask (nullable) is 0. Same bits at every level.
void softmax_backward_row(const float* p, const float* pd, float* ds, int64_t n, float scale,
                          const float* mask);
// Vectorised logsumexp of z [n] (exp sums in 16 fixed double lanes: the same bits at every level)
// and, when d is not null, d[c] = s * softmax(z)[c]: a cross-entropy row and its gradient.
float logsumexp_and_softmax(const float* z, int64_t n, float s, float* d);
// logsumexp of one row.
float logsumexp(const float* x, int64_t n);

// One AdamW update of n parameters in place (train/adamw.h has the rule): gi = g * clip,
// m = beta1 * m + (1 - beta1) * gi, v = beta2 * v + (1 - beta2) * gi * gi,
// w = w * keep - step_size * m / (sqrt(v * inv_c2) + eps). Elementwise IEEE arithmetic without
// fused multiply-adds, so every level gives the same bits; the levels only widen the vectors.
struct AdamWScalars {
  float clip, beta1, one_minus_beta1, beta2, one_minus_beta2, keep, step_size, inv_c2, eps;
};
void adamw_update(float* w, const float* g, float* m, float* v, int64_t n, const AdamWScalars& s);

// Dropout is keyed by (key, element index): kept iff uniform01(key, index) >= rate; kept values
// are scaled by 1/(1-rate). rate must lie in [0, 1).
inline bool dropout_keep(uint64_t key, uint64_t index, float rate);
float dropout_scale(float rate);
// out[i] = dropout of in[i] at element index0 + i of stream key (dropout_keep, times
// dropout_scale(rate)), vectorised; in == out is allowed. Same bits at every level.
void dropout_span(uint64_t key, uint64_t index0, float rate, const float* in, float* out,
                  int64_t n);

}  // namespace sparsemoe

#include "sparsemoe/core/rng.h"

namespace sparsemoe {
inline bool dropout_keep(uint64_t key, uint64_t index, float rate) {
  return rate <= 0.f || uniform01(key, index) >= rate;
}
}  // namespace sparsemoe
