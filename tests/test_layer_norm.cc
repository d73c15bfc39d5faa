// LayerNorm: zero mean / unit variance rows, finite-difference gradients, bitwise determinism
// across thread counts, and the shape error.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/nn/layer_norm.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

TEST(LayerNorm, NormalisesRows) {
  LayerNorm ln(6, 1e-12);
  const Tensor x = random_tensor({3, 4, 6}, 1, -3.f, 5.f);
  Tensor y;
  ln.forward(x, y);
  for (int64_t n = 0; n < 12; ++n) {
    double m = 0, v = 0;
    for (int h = 0; h < 6; ++h) m += y[n * 6 + h];
    m /= 6;
    for (int h = 0; h < 6; ++h) v += (y[n * 6 + h] - m) * (y[n * 6 + h] - m);
    EXPECT_NEAR(m, 0.0, 1e-6);
    EXPECT_NEAR(v / 6, 1.0, 1e-5);
  }
  EXPECT_THROW(ln.forward(Tensor({2, 5}), y), InvalidArgument);
}

TEST(LayerNorm, GradientsMatchFiniteDifferences) {
  LayerNorm ln(5, 1e-5);
  ln.gamma = random_tensor({5}, 3, 0.5f, 1.5f);
  ln.beta = random_tensor({5}, 4);
  Tensor x = random_tensor({2, 3, 5}, 5), r = random_tensor({2, 3, 5}, 6), y, dx;
  auto loss = [&] {
    ln.forward(x, y);
    return test::dot(y, r);
  };
  loss();
  zero_grads(ln.params());
  ln.backward(r, dx);
  test::check_gradient("x", x, dx, loss, 30);
  for (auto& p : ln.params()) test::check_gradient(p.name, *p.value, *p.grad, loss);
}

TEST(LayerNorm, BitwiseIdenticalAcrossThreadCounts) {
  const Tensor x = random_tensor({64, 130}, 7), r = random_tensor({64, 130}, 8);
  Tensor y[2], dx[2], gg[2];
  const int saved = num_threads();
  for (int t : {1, 2}) {
    set_num_threads(t);
    LayerNorm ln(130);
    ln.forward(x, y[t - 1]);
    ln.backward(r, dx[t - 1]);
    gg[t - 1] = ln.gamma_grad;
  }
  set_num_threads(saved);
  EXPECT_TRUE(test::bitwise_equal(y[0], y[1]));
  EXPECT_TRUE(test::bitwise_equal(dx[0], dx[1]));
  EXPECT_TRUE(test::bitwise_equal(gg[0], gg[1]));
}

}  // namespace
}  // namespace sparsemoe
