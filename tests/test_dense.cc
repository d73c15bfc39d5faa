// Dense: against a plain-loop reference, finite-difference gradients for each activation with and
// without bias, and the shape error.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/nn/dense.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

TEST(Dense, MatchesPlainLoops) {
  Dense d(5, 3, Activation::kTanh, true, 0.5, 1);
  d.bias = random_tensor({3}, 2);
  const Tensor x = random_tensor({2, 130, 5}, 3);  // more than one row tile
  Tensor y;
  d.forward(x, y);
  ASSERT_EQ(y.shape(), (Shape{2, 130, 3}));
  for (int64_t n = 0; n < 260; ++n)
    for (int64_t j = 0; j < 3; ++j) {
      double acc = d.bias[j];
      for (int64_t i = 0; i < 5; ++i) acc += x[n * 5 + i] * d.kernel[i * 3 + j];
      EXPECT_NEAR(y[n * 3 + j], std::tanh(acc), 1e-5);
    }
  EXPECT_THROW(d.forward(Tensor({2, 4}), y), InvalidArgument);
}

TEST(Dense, GradientsMatchFiniteDifferences) {
  for (Activation act : {Activation::kLinear, Activation::kTanh, Activation::kGeluTanh})
    for (bool bias : {true, false}) {
      Dense d(4, 6, act, bias, 0.5, 7);
      Tensor x = random_tensor({3, 4}, 1), r = random_tensor({3, 6}, 2), y, dx;
      auto loss = [&] {
        d.forward(x, y);
        return test::dot(y, r);
      };
      loss();
      zero_grads(d.params());
      d.backward(r, &dx);
      const std::string what = activation_name(act) + (bias ? " bias" : "");
      test::check_gradient(what + " x", x, dx, loss);
      for (auto& p : d.params()) test::check_gradient(what + " " + p.name, *p.value, *p.grad, loss);
    }
}

}  // namespace
}  // namespace sparsemoe
