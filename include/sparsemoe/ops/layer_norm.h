// Layer normalisation over rows of a raw buffer, the kernel under nn/layer_norm.h:
// y = (x - mean) / sqrt(var + eps) * gamma + beta, with the biased variance as Keras computes it.
// Means and variances are double sums in 16 fixed lanes, vectorised at every SIMD level with the
// same bits; rows are independent, so the bits do not depend on the thread count either.
#pragma once

#include <cstdint>

namespace sparsemoe {

// x [N, H] -> y [N, H]; saves xhat [N, H] (the normalised input) and rstd [N] for the backward.
void layer_norm_forward(const float* x, int64_t N, int64_t H, const float* gamma, const float* beta,
                        double eps, float* y, float* xhat, float* rstd);

// dy [N, H] -> dx [N, H] (overwritten); accumulates dgamma [H] and dbeta [H], summing over rows
// in row order.
void layer_norm_backward(const float* dy, const float* xhat, const float* rstd, const float* gamma,
                         int64_t N, int64_t H, float* dx, float* dgamma, float* dbeta);

}  // namespace sparsemoe
