// SharedEmbeddingSoftmaxLayer: the loss and every metric against a plain-loop computation of the
// spec's formulas (both denominators, padding, label smoothing, z-loss, clipping), the lookup,
// and bad input. Gradients of the loss and the lookup: the harness's lingvo/shared_softmax cases.
#include <gtest/gtest.h>

#include <cmath>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/lingvo/shared_embedding_softmax.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

SharedEmbeddingSoftmaxConfig small(bool by_size, double clip) {
  SharedEmbeddingSoftmaxConfig c;
  c.vocab_size = 7;
  c.max_len = 5;
  c.embedding_dim = 4;
  c.z_loss_coef = 0.05;
  c.label_smoothing = 0.2;
  c.logits_abs_max = clip;
  c.use_tgt_labels_size_as_loss_denominator = by_size;
  c.seed = 3;
  return c;
}

struct Inputs {
  Tensor act = random_tensor({2, 5, 4}, 11, -2.f, 2.f);
  Tensor labels = Tensor({2, 5}, {1, 0, 6, 3, 3, 2, 5, 4, 0, 1});
  Tensor seg = Tensor({2, 5}, {1, 1, 1, 0, 0, 2, 2, 2, 2, 2});
};

// The spec's formulas, written out with plain loops in double.
std::map<std::string, double> expected(SharedEmbeddingSoftmax& layer, const Inputs& in,
                                       std::vector<double>& per_example) {
  const auto& c = layer.config();
  const int64_t V = c.vocab_size, D = c.embedding_dim, B = 2, L = 5;
  const double off = c.label_smoothing / V, on = 1 - c.label_smoothing + off;
  double loss = 0, z = 0, xent = 0, soft = 0, nonpad = 0;
  per_example.assign(B, 0);
  std::vector<double> row_np(B, 0);
  for (int64_t n = 0; n < B * L; ++n) {
    std::vector<double> logit(V);
    for (int64_t v = 0; v < V; ++v) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d)
        s += in.act[n * D + d] / std::sqrt(D) * layer.embedding[v * D + d];
      if (c.logits_abs_max > 0) s = std::max(-c.logits_abs_max, std::min(c.logits_abs_max, s));
      logit[v] = s;
    }
    double sum = 0;
    for (double l : logit) sum += std::exp(l);
    const double lse = std::log(sum);
    const int64_t y = static_cast<int64_t>(in.labels[n]);
    double ce_soft = 0;
    for (int64_t v = 0; v < V; ++v) ce_soft -= (v == y ? on : off) * (logit[v] - lse);
    const double w = in.seg[n] != 0 ? 1 : 0, zt = c.z_loss_coef * lse * lse;
    loss += (ce_soft + zt) * w, z += zt * w, xent += (lse - logit[y]) * w, soft += ce_soft * w;
    nonpad += w;
    per_example[n / L] += (ce_soft + zt) * w;
    row_np[n / L] += w;
  }
  const double denom = c.use_tgt_labels_size_as_loss_denominator ? B * L : nonpad;
  for (int64_t b = 0; b < B; ++b)
    per_example[b] /= c.use_tgt_labels_size_as_loss_denominator ? L : row_np[b];
  return {{"loss", loss / denom},
          {"avg_z_loss_inc", z / denom},
          {"mean_xent", xent / nonpad},
          {"soft_targets_xent", soft / nonpad},
          {"weight", nonpad}};
}

TEST(SharedEmbeddingSoftmax, LossAndMetricsFollowTheFormulas) {
  for (bool by_size : {true, false})
    for (double clip : {0.0, 0.5}) {
      SharedEmbeddingSoftmax layer(small(by_size, clip));
      Inputs in;
      const SoftmaxLossResult r = layer.compute_loss(in.act, in.labels, in.seg);
      std::vector<double> per_example;
      const auto want = expected(layer, in, per_example);
      for (const auto& [name, value] : want)
        EXPECT_NEAR(r.metrics.at(name).first, value, 1e-5) << name << " " << by_size << clip;
      EXPECT_EQ(r.metrics.at("mean_xent").second, 8.0);  // weight = non-padding tokens
      EXPECT_EQ(r.metrics.at("loss").second, 1.0);
      for (int b = 0; b < 2; ++b) EXPECT_NEAR(r.per_example_loss[b], per_example[b], 1e-5);
    }
}

TEST(SharedEmbeddingSoftmax, AllPaddingReportsZeroNotNan) {
  SharedEmbeddingSoftmax layer(small(false, 0));
  Inputs in;
  in.seg.fill(0.f);
  const SoftmaxLossResult r = layer.compute_loss(in.act, in.labels, in.seg);
  for (const auto& [name, vw] : r.metrics) EXPECT_EQ(vw.first, 0.0) << name;
}

TEST(SharedEmbeddingSoftmax, Lookup) {
  SharedEmbeddingSoftmax layer(small(true, 0));
  const Tensor ids({2, 3}, {1, 6, 1, 0, 2, 3}), pos({2, 3}, {0, 1, 2, 0, 1, 4});
  Tensor out;
  layer.forward(ids, pos, out);
  ASSERT_EQ(out.shape(), (Shape{2, 3, 4}));
  for (int64_t d = 0; d < 4; ++d)
    EXPECT_EQ(out[(1 * 3 + 2) * 4 + d], layer.embedding[3 * 4 + d] + layer.pos_emb[4 * 4 + d]);
  // Its gradient, and the loss's: the harness's lingvo/shared_softmax cases.
}

TEST(SharedEmbeddingSoftmax, BadInputNamesTheArgument) {
  SharedEmbeddingSoftmax layer(small(true, 0));
  Tensor out;
  auto expect_msg = [](auto fn, const std::string& what) {
    try {
      fn();
      FAIL() << "no error for " << what;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { layer.forward(Tensor({1, 2}, {0, 7}), Tensor({1, 2}), out); }, "ids");
  expect_msg(
      [&] {
        layer.forward(Tensor({1, 2}, {0, 1}), Tensor({1, 2}, {0, 5}), out);
      },
      "segment_pos");
  Inputs in;
  expect_msg([&] { layer.compute_loss(in.act, Tensor({2, 5}, 1.5f), in.seg); }, "labels");
  expect_msg([&] { layer.compute_loss(in.act, in.labels, Tensor({2, 4})); }, "segment_ids");
  auto j = small(true, 0).to_json();
  j["label_smooth"] = 0.1;
  EXPECT_THROW(SharedEmbeddingSoftmaxConfig::from_json(j), ConfigError);
}

}  // namespace
}  // namespace sparsemoe
