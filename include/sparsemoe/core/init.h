// Weight initialisers on the counter RNG: a value depends only on (key, element index), so
// initialisation is the same for any thread count.
#pragma once

#include <cstdint>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

// normal(0, stddev), counter-based; truncate_at > 0 resamples beyond that many stddevs. Element i
// draws from counter index0 + i: a part of a larger tensor starting at its element index0 (a
// process's block of stacked experts) gets exactly the values the whole tensor has there.
void fill_normal(Tensor& t, double stddev, uint64_t key, double truncate_at = 0.0,
                 int64_t index0 = 0);
// Keras TruncatedNormal: normal(0, stddev) resampled until within 2 stddev.
void fill_truncated_normal(Tensor& t, double stddev, uint64_t key, int64_t index0 = 0);

}  // namespace sparsemoe
