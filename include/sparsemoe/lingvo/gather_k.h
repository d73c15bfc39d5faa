// lingvo's GatherK (spec §13): from selected positions [B, T] (0/1), take per row the k
// largest selected positions, in ascending order, and gather the values there: [B, T, ...] ->
// [B, k, ...], with a padding mask [B, k] marking slots that found no selected position (they
// come first). The reference sources' docstring shows 0 in padded slots while its code gathers
// position 0's value; we default to 0 and offer the code's behaviour as an option. Differentiable
// w.r.t. the values.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

enum class GatherKPadding {
  kZero,           // padded slots hold 0 (the docstring; default)
  kFirstPosition,  // padded slots hold the value at position 0 (lingvo's code)
};

struct GatherKIndex {
  int64_t B = 0, T = 0, k = 0;
  std::vector<int64_t> source;  // [B, k] gathered position, -1 for a padded slot
  GatherKPadding padding = GatherKPadding::kZero;
};

// selected [B, T] of 0/1; 1 <= k <= T. Fills padding [B, k] (1 = padded) and the index.
GatherKIndex gather_k_index(const Tensor& selected, int64_t k, Tensor& padding,
                            GatherKPadding mode = GatherKPadding::kZero);

// values [B, T, ...] -> out [B, k, ...].
void gather_k(const GatherKIndex& index, const Tensor& values, Tensor& out);
// dout [B, k, ...] -> adds into dvalues [B, T, ...].
void gather_k_backward(const GatherKIndex& index, const Tensor& dout, Tensor& dvalues);

// lingvo's signature: a list of value tensors, each [B, T, ...]; returns the gathered list.
std::vector<Tensor> gather_k(const Tensor& selected, const std::vector<Tensor>& values, int64_t k,
                             Tensor& padding, GatherKPadding mode = GatherKPadding::kZero);

}  // namespace sparsemoe
