// Weight initialisers on the counter RNG: a value depends only on (key, element index), so
// initialisation is the same for any thread count.
#pragma once

#include <cstdint>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

// normal(0, stddev), counter-based; truncate_at > 0 resamples beyond that many stddevs.
void fill_normal(Tensor& t, double stddev, uint64_t key, double truncate_at = 0.0);
// Keras TruncatedNormal: normal(0, stddev) resampled until within 2 stddev.
void fill_truncated_normal(Tensor& t, double stddev, uint64_t key);

}  // namespace sparsemoe
