// AdamW against hand-computed steps, the schedule, decay exclusions, clipping, state round trip
// (bitwise continuation) and thread-count determinism.
#include <gtest/gtest.h>

#include <cmath>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/train/adamw.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

TEST(AdamW, MatchesHandComputedSteps) {
  Tensor w({2}, {1.f, -2.f}), g({2}), ln({1}, {3.f}), lng({1});
  const std::vector<ParamRef> params = {{"dense/kernel", &w, &g}, {"layer_norm/gamma", &ln, &lng}};
  AdamWConfig c;
  c.learning_rate = 0.1, c.weight_decay = 0.01, c.clip_norm = 0, c.epsilon = 1e-6;
  AdamW opt(c, params);
  // Reference in double: PyTorch's AdamW order (decay, then the bias-corrected Adam step).
  double rw[2] = {1, -2}, rl = 3, m[3] = {}, v[3] = {};
  const double grads[2][3] = {{0.5, -1.0, 0.25}, {0.1, 0.2, -0.3}};
  for (int t = 1; t <= 2; ++t) {
    g[0] = static_cast<float>(grads[t - 1][0]), g[1] = static_cast<float>(grads[t - 1][1]);
    lng[0] = static_cast<float>(grads[t - 1][2]);
    opt.step(params);
    double* p[3] = {&rw[0], &rw[1], &rl};
    for (int i = 0; i < 3; ++i) {
      const double gi = grads[t - 1][i];
      m[i] = 0.9 * m[i] + 0.1 * gi;
      v[i] = 0.999 * v[i] + 0.001 * gi * gi;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.999, t));
      if (i < 2) *p[i] *= 1 - 0.1 * 0.01;  // the layer norm is not decayed
      *p[i] -= 0.1 * mh / (std::sqrt(vh) + 1e-6);
    }
    EXPECT_NEAR(w[0], rw[0], 1e-6) << "step " << t;
    EXPECT_NEAR(w[1], rw[1], 1e-6) << "step " << t;
    EXPECT_NEAR(ln[0], rl, 1e-6) << "step " << t;
  }
  EXPECT_EQ(opt.steps_done(), 2);
  // First step by hand: w0 = 1 * 0.999 - 0.1 * 0.5 / (0.5 + 1e-6).
  EXPECT_NEAR(0.999 - 0.1 * 0.5 / (0.5 + 1e-6), 0.8990002, 1e-7);
}

TEST(AdamW, ScheduleWarmsUpThenDecaysLinearly) {
  AdamWConfig c;
  c.learning_rate = 2.0, c.warmup_steps = 10, c.total_steps = 110;
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 1), 0.2);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 5), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 10), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 60), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 110), 0.0);
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 500), 0.0);
  c.total_steps = 0;
  EXPECT_DOUBLE_EQ(learning_rate_at(c, 500), 2.0);
  c.warmup_steps = 200, c.total_steps = 100;
  EXPECT_THROW(c.validate(), ConfigError);
  EXPECT_THROW(AdamWConfig::from_json({{"learning_rat", 1}}), ConfigError);
}

TEST(AdamW, ClipsByGlobalNorm) {
  Tensor a({2}, {1, 1}), ga({2}, {3, 0}), b({1}, {1}), gb({1}, {4});
  AdamWConfig c;
  c.clip_norm = 1.0, c.weight_decay = 0;
  AdamW clipped(c, {{"a", &a, &ga}, {"b", &b, &gb}});
  EXPECT_DOUBLE_EQ(clipped.step({{"a", &a, &ga}, {"b", &b, &gb}}), 5.0);  // sqrt(9 + 16)
  // The same step with pre-clipped gradients and no clipping gives the same weights.
  Tensor a2({2}, {1, 1}), ga2({2}, {3.f * 0.2f, 0}), b2({1}, {1}), gb2({1}, {4.f * 0.2f});
  c.clip_norm = 0;
  AdamW plain(c, {{"a", &a2, &ga2}, {"b", &b2, &gb2}});
  plain.step({{"a", &a2, &ga2}, {"b", &b2, &gb2}});
  EXPECT_TRUE(test::bitwise_equal(a, a2));
  EXPECT_TRUE(test::bitwise_equal(b, b2));
  // A different parameter list is an error.
  EXPECT_THROW(clipped.step({{"a", &a, &ga}}), InvalidArgument);
}

TEST(AdamW, StateRoundTripContinuesBitwise) {
  AdamWConfig c;
  c.learning_rate = 0.01, c.warmup_steps = 2, c.total_steps = 10;
  auto make = [](Tensor& w, Tensor& g) { return std::vector<ParamRef>{{"w", &w, &g}}; };
  Tensor w1 = test::random_tensor({100}, 1), g1({100}), w2, g2({100});
  AdamW a(c, make(w1, g1));
  for (int s = 0; s < 3; ++s) {
    g1 = test::random_tensor({100}, 10 + s);
    a.step(make(w1, g1));
  }
  // Restore a second optimizer from the first one's state and weights.
  w2 = w1;
  AdamW b(c, make(w2, g2));
  std::vector<std::pair<std::string, Tensor>> saved;
  for (const auto& [name, t] : a.state()) saved.emplace_back(name, *t);
  b.load_state(saved, a.steps_done());
  for (int s = 3; s < 6; ++s) {
    g1 = test::random_tensor({100}, 10 + s);
    g2 = g1;
    a.step(make(w1, g1));
    b.step(make(w2, g2));
  }
  EXPECT_TRUE(test::bitwise_equal(w1, w2));
  saved.pop_back();
  EXPECT_THROW(b.load_state(saved, 3), IoError);
}

TEST(AdamW, GradNormIsThreadCountIndependent) {
  Tensor w({100000}), g = test::random_tensor({100000}, 3);
  const int saved = num_threads();
  set_num_threads(1);
  const double n1 = global_grad_norm({{"w", &w, &g}});
  set_num_threads(2);
  const double n2 = global_grad_norm({{"w", &w, &g}});
  set_num_threads(saved);
  EXPECT_EQ(n1, n2);
}

}  // namespace
}  // namespace sparsemoe
