// GatherK: the reference sources' docstring example with padded slots as 0 (our default) and as
// position 0's value (lingvo's code), the multi-dimensional value path, its backward, and bad
// input.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/lingvo/gather_k.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

const Tensor kSelected({5, 4}, {0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1});

Tensor docstring_values() {
  Tensor v({5, 4});
  for (int64_t i = 0; i < 20; ++i) v[i] = static_cast<float>(2 * i + 1);  // 1, 3, 5, ...
  return v;
}

TEST(GatherK, DocstringExampleWithZeroPadding) {
  Tensor padding;
  const auto out = gather_k(kSelected, {docstring_values()}, 3, padding);
  EXPECT_EQ(out[0].to_vector(),
            (std::vector<float>{0, 5, 7, 0, 11, 13, 0, 0, 0, 25, 27, 29, 35, 37, 39}));
  EXPECT_EQ(padding.to_vector(), (std::vector<float>{1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0}));
}

TEST(GatherK, LingvoCodePaddingGathersPositionZero) {
  Tensor padding;
  const auto out =
      gather_k(kSelected, {docstring_values()}, 3, padding, GatherKPadding::kFirstPosition);
  EXPECT_EQ(out[0].to_vector(),
            (std::vector<float>{1, 5, 7, 9, 11, 13, 17, 17, 17, 25, 27, 29, 35, 37, 39}));
}

TEST(GatherK, TrailingDimsAndBackward) {
  Tensor padding;
  const GatherKIndex idx = gather_k_index(kSelected, 2, padding);
  const Tensor v = test::random_tensor({5, 4, 3}, 1);
  Tensor out;
  gather_k(idx, v, out);
  ASSERT_EQ(out.shape(), (Shape{5, 2, 3}));
  // Row 4 selects every position: the two largest, 2 and 3, ascending.
  for (int64_t d = 0; d < 3; ++d) {
    EXPECT_EQ(out[(4 * 2 + 0) * 3 + d], v[(4 * 4 + 2) * 3 + d]);
    EXPECT_EQ(out[(4 * 2 + 1) * 3 + d], v[(4 * 4 + 3) * 3 + d]);
  }
  // The gradient: the harness's lingvo/gather_k case.
}

TEST(GatherK, BadInput) {
  Tensor padding;
  EXPECT_THROW(gather_k_index(kSelected, 5, padding), InvalidArgument);  // k > T
  EXPECT_THROW(gather_k_index(Tensor({2, 2}, 0.5f), 1, padding), InvalidArgument);
  EXPECT_THROW(gather_k(kSelected, {Tensor({5, 3})}, 2, padding), InvalidArgument);
}

}  // namespace
}  // namespace sparsemoe
