// Batch packing and MLM masking (see batching.h).
#include "sparsemoe/data/batching.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/data/tokenizer.h"

namespace sparsemoe {

void pack_batch(const std::vector<const std::vector<int>*>& rows, int64_t L, Batch& batch,
                const std::vector<int64_t>& labels) {
  check_arg(L >= 3,
            "pack_batch: sequence length must be >= 3 ([CLS] x [SEP]), got " + std::to_string(L));
  check_arg(!rows.empty(), "pack_batch: no rows");
  check_arg(labels.empty() || labels.size() == rows.size(),
            "pack_batch: labels must be empty or one per row (" + std::to_string(rows.size()) +
                "), got " + std::to_string(labels.size()));
  const int64_t B = static_cast<int64_t>(rows.size());
  batch.ids.resize({B, L});
  batch.mask.resize({B, L});
  batch.ids.zero();  // [PAD] is id 0
  batch.mask.zero();
  batch.real_tokens = 0;
  for (int64_t b = 0; b < B; ++b) {
    float* ids = batch.ids.data() + b * L;
    float* mask = batch.mask.data() + b * L;
    const std::vector<int>& row = *rows[b];
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(row.size()), L - 2);
    ids[0] = Tokenizer::kCls;
    for (int64_t i = 0; i < n; ++i) ids[1 + i] = static_cast<float>(row[i]);
    ids[n + 1] = Tokenizer::kSep;
    for (int64_t i = 0; i < n + 2; ++i) mask[i] = 1.0f;
    batch.real_tokens += n + 2;
  }
  batch.labels = labels;
  batch.positions = Tensor();
  batch.mlm_labels.clear();
  batch.mlm_weights.clear();
}

int64_t MlmOptions::resolved_max_predictions(int64_t L) const {
  return max_predictions > 0 ? max_predictions
                             : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(mask_rate * L)));
}

void mask_batch(Batch& batch, const MlmOptions& opt, int64_t vocab_size, uint64_t key) {
  check_arg(opt.mask_rate > 0 && opt.mask_rate <= 1,
            "mlm mask_rate must be in (0, 1], got " + std::to_string(opt.mask_rate));
  check_arg(opt.mask_token >= 0 && opt.random_token >= 0 && opt.mask_token + opt.random_token <= 1,
            "mlm mask_token and random_token must be >= 0 with a sum <= 1");
  check_arg(
      vocab_size > Tokenizer::kNumSpecial,
      "mask_batch: vocab_size must exceed the special ids, got " + std::to_string(vocab_size));
  check_arg(batch.ids.rank() == 2, "mask_batch: pack the batch first");
  const int64_t B = batch.ids.dim(0), L = batch.ids.dim(1);
  const int64_t P = opt.resolved_max_predictions(L);
  batch.positions.resize({B, P});
  batch.positions.zero();
  batch.mlm_labels.assign(B * P, 0);
  batch.mlm_weights.assign(B * P, 0.0f);
  std::vector<std::pair<float, int64_t>> scored;  // (draw, position)
  for (int64_t b = 0; b < B; ++b) {
    float* ids = batch.ids.data() + b * L;
    const float* mask = batch.mask.data() + b * L;
    scored.clear();
    const uint64_t choose = derive_key(key, b, 0), kind = derive_key(key, b, 1),
                   pick = derive_key(key, b, 2);
    for (int64_t i = 0; i < L; ++i) {
      const int id = static_cast<int>(ids[i]);
      if (mask[i] == 0 || id == Tokenizer::kCls || id == Tokenizer::kSep) continue;
      scored.emplace_back(uniform01(choose, i), i);
    }
    if (scored.empty()) continue;
    const int64_t n = static_cast<int64_t>(scored.size());
    const int64_t k = std::min<int64_t>(
        P, std::max<int64_t>(1, static_cast<int64_t>(std::llround(opt.mask_rate * n))));
    // The k smallest draws (ties by position: std::pair ordering), then sorted by position.
    std::partial_sort(scored.begin(), scored.begin() + k, scored.end());
    std::sort(scored.begin(), scored.begin() + k,
              [](const auto& x, const auto& y) { return x.second < y.second; });
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = scored[j].second;
      batch.positions[b * P + j] = static_cast<float>(i);
      batch.mlm_labels[b * P + j] = static_cast<int64_t>(ids[i]);
      batch.mlm_weights[b * P + j] = 1.0f;
      const float r = uniform01(kind, i);
      if (r < opt.mask_token) {
        ids[i] = Tokenizer::kMask;
      } else if (r < opt.mask_token + opt.random_token) {
        const int64_t span = vocab_size - Tokenizer::kNumSpecial;
        const int64_t id =
            Tokenizer::kNumSpecial +
            std::min<int64_t>(span - 1, static_cast<int64_t>(uniform01(pick, i) * span));
        ids[i] = static_cast<float>(id);
      }
    }
  }
}

}  // namespace sparsemoe
