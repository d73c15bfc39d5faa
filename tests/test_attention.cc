// Self-attention: masked keys never influence the outputs, finite-difference gradients with a
// mask (including a fully masked row) and dropout, and bitwise determinism across thread counts.
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

TEST(Attention, GradientsMatchFiniteDifferences) {
  SelfAttention att(6, 3, 0.25, 0.4, 3);
  Tensor mask({2, 4, 4}, 1.f);
  for (int64_t j = 0; j < 4; ++j) mask[(0 * 4 + 2) * 4 + j] = 0.f;  // a fully masked row
  mask[(1 * 4 + 1) * 4 + 3] = 0.f;
  Tensor x = random_tensor({2, 4, 6}, 4), r = random_tensor({2, 4, 6}, 5), y, dx;
  const ForwardOptions opt{true, 7};
  auto loss = [&] {
    att.forward(x, &mask, y, opt);
    return test::dot(y, r);
  };
  loss();
  zero_grads(att.params());
  att.backward(r, dx);
  test::check_gradient("x", x, dx, loss, 48);
  for (auto& p : att.params()) test::check_gradient(p.name, *p.value, *p.grad, loss, 16);
}

TEST(Attention, BitwiseIdenticalAcrossThreadCounts) {
  const Tensor x = random_tensor({3, 7, 8}, 6), r = random_tensor({3, 7, 8}, 7);
  Tensor y[2], dx[2];
  const int saved = num_threads();
  for (int t : {1, 2}) {
    set_num_threads(t);
    SelfAttention att(8, 4, 0.1, 0.3, 8);
    att.forward(x, nullptr, y[t - 1], {true, 1});
    att.backward(r, dx[t - 1]);
  }
  set_num_threads(saved);
  EXPECT_TRUE(test::bitwise_equal(y[0], y[1]));
  EXPECT_TRUE(test::bitwise_equal(dx[0], dx[1]));
  EXPECT_THROW(SelfAttention(8, 3), InvalidArgument);  // heads must divide H
}

}  // namespace
}  // namespace sparsemoe
