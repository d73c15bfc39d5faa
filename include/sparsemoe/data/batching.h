// Fixed-length batches for the encoder (the mixing layers need exactly max_sequence_length
// tokens) and BERT's masked-LM corruption. Row b is [CLS] tokens[: L-2] [SEP] [PAD]...; the mask
// marks the real tokens. Masking draws from counter-based random numbers keyed by (key, row,
// position), so a batch's corruption is a pure function of the key: resuming at a step
// reproduces it bitwise.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

struct Batch {
  Tensor ids;                       // [B, L] token ids
  Tensor mask;                      // [B, L] 1 = real token, 0 = padding
  Tensor positions;                 // [B, P] masked positions (MLM only)
  std::vector<int64_t> mlm_labels;  // [B * P] the original ids at `positions`
  std::vector<float> mlm_weights;   // [B * P] 1 for a prediction, 0 for an unused slot
  std::vector<int64_t> labels;      // [B] classification labels (when packed with labels)
  int64_t real_tokens = 0;          // sum of the mask
};

// Packs rows of token ids (no specials) into [B, L] with [CLS]/[SEP] and padding; L >= 3.
// `labels`, if not empty, must have one entry per row.
void pack_batch(const std::vector<const std::vector<int>*>& rows, int64_t L, Batch& batch,
                const std::vector<int64_t>& labels = {});

struct MlmOptions {
  double mask_rate = 0.15;      // fraction of each row's real, non-special tokens predicted
  int64_t max_predictions = 0;  // P; 0: ceil(mask_rate * L)
  double mask_token = 0.8;      // of the predicted: replaced by [MASK] ...
  double random_token = 0.1;    // ... by a random non-special id; the rest stay unchanged
  int64_t resolved_max_predictions(int64_t L) const;

  template <class V>
  void fields(V& v) {
    v("mask_rate", mask_rate, "fraction of each row's real tokens predicted", in_open_closed(0, 1));
    v("max_predictions", max_predictions, "P, predictions per row (0: ceil(mask_rate * L))",
      at_least(0));
    v("mask_token", mask_token, "of the predicted: replaced by [MASK]", in_closed(0, 1));
    v("random_token", random_token, "... by a random token (mask_token + random_token <= 1)",
      in_closed(0, 1));
  }
};

// Masked-LM corruption of a packed batch: each row with n real tokens between [CLS] and [SEP]
// gets max(1, round(mask_rate * n)) predictions (at most P), chosen uniformly without
// replacement; ids at those positions are replaced as the options say; positions are sorted.
void mask_batch(Batch& batch, const MlmOptions& opt, int64_t vocab_size, uint64_t key);

}  // namespace sparsemoe
