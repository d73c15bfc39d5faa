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

// In-place softmax over each of `rows` rows of length `n` (float32, max-subtracted).
void softmax_rows(float* x, int64_t rows, int64_t n);
// logsumexp of one row.
float logsumexp(const float* x, int64_t n);

// Dropout is keyed by (key, element index): kept iff uniform01(key, index) >= rate; kept values
// are scaled by 1/(1-rate). rate must lie in [0, 1).
inline bool dropout_keep(uint64_t key, uint64_t index, float rate);
float dropout_scale(float rate);

}  // namespace sparsemoe

#include "sparsemoe/core/rng.h"

namespace sparsemoe {
inline bool dropout_keep(uint64_t key, uint64_t index, float rate) {
  return rate <= 0.f || uniform01(key, index) >= rate;
}
}  // namespace sparsemoe
