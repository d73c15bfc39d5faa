// StateLayer / DecodingCache: identity in training, batch-major writes equal to lingvo's
// (1 - onehot(t)) * state + onehot(t) * x, flat-beam prefix updates and the transposed view, and
// errors that leave the state unchanged.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/lingvo/state_layer.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

TEST(StateLayer, IdentityInTraining) {
  const Tensor x = random_tensor({2, 5, 3}, 1);
  EXPECT_EQ(&state_layer_forward(x, nullptr, -1), &x);
}

TEST(StateLayer, BatchMajorWritesOneStep) {
  DecodingState s = DecodingState::batch_major(2, 4, {3});
  Tensor expect({2, 4, 3});  // lingvo: state = (1 - onehot(t)) * state + onehot(t) * x
  for (int64_t t : {0, 2, 1, 2}) {
    const Tensor x = random_tensor({2, 1, 3}, 10 + t);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t s2 = 0; s2 < 4; ++s2)
        for (int64_t d = 0; d < 3; ++d) {
          const float z = s2 == t ? 1.f : 0.f;
          float& e = expect[(b * 4 + s2) * 3 + d];
          e = (1 - z) * e + z * x[b * 3 + d];
        }
    const Tensor& y = state_layer_forward(x, &s, t);
    EXPECT_TRUE(test::bitwise_equal(y, expect)) << t;
  }
  s.reset();
  for (int64_t i = 0; i < s.state().numel(); ++i) EXPECT_EQ(s.state()[i], 0.f);
}

TEST(StateLayer, FlatBeamPrefixAndSingleSteps) {
  const int64_t B = 2, beam = 3, T = 4;
  DecodingState s = DecodingState::flat_beam(B, beam, T, {2});
  const Tensor prefix = random_tensor({B, 2 * beam, 2}, 1);  // steps 0 and 1 at once
  s.update(0, prefix);
  const Tensor step = random_tensor({B, beam, 2}, 2);
  const Tensor& y = s.update(2, step);
  ASSERT_EQ(y.shape(), (Shape{B, T * beam, 2}));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < T * beam; ++j)
      for (int64_t d = 0; d < 2; ++d) {
        const int64_t t = j / beam;
        const float want = t < 2    ? prefix[(b * 2 * beam + j) * 2 + d]
                           : t == 2 ? step[(b * beam + j - 2 * beam) * 2 + d]
                                    : 0.f;
        EXPECT_EQ(y[(b * T * beam + j) * 2 + d], want) << b << " " << j;
      }
  EXPECT_EQ(s.state().shape(), (Shape{T, B, beam, 2}));
}

TEST(StateLayer, ErrorsLeaveTheStateUnchanged) {
  DecodingState s = DecodingState::batch_major(2, 3, {4});
  s.update(1, Tensor({2, 1, 4}, 1.f));
  const Tensor before = s.state();
  EXPECT_THROW(s.update(3, Tensor({2, 1, 4})), InvalidArgument);
  EXPECT_THROW(s.update(0, Tensor({2, 2, 4})), InvalidArgument);
  EXPECT_TRUE(test::bitwise_equal(s.state(), before));
  DecodingState f = DecodingState::flat_beam(1, 2, 3, {1});
  EXPECT_THROW(f.update(2, Tensor({1, 4, 1})), InvalidArgument);  // steps 2..3 > max
  EXPECT_THROW(f.update(0, Tensor({1, 3, 1})), InvalidArgument);  // not a multiple of beam
}

TEST(DecodingCache, NamedStates) {
  DecodingCache cache;
  cache.add("layer0/moe", DecodingState::batch_major(1, 2, {2}));
  cache.add("layer1/attention", DecodingState::flat_beam(1, 2, 2, {2}));
  cache.at("layer0/moe").update(0, Tensor({1, 1, 2}, 3.f));
  EXPECT_EQ(cache.at("layer0/moe").state()[0], 3.f);
  cache.reset();
  EXPECT_EQ(cache.at("layer0/moe").state()[0], 0.f);
  try {
    cache.at("layer2");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("layer1/attention"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sparsemoe
