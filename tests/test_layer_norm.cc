// LayerNorm: zero mean / unit variance rows and the shape error. Gradients, determinism and
// errors: the harness's nn/layer_norm cases (sparsemoe/cases/cases.h).
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

}  // namespace
}  // namespace sparsemoe
