// Embeddings: the sum + LayerNorm against a direct computation and the length and id errors.
// Gradients with the factorised-width projection, dense inputs and dropout: the harness's
// nn/embeddings case.
#include <gtest/gtest.h>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/nn/embeddings.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

EmbeddingsConfig tiny(int64_t W) {
  EmbeddingsConfig c;
  c.vocab_size = 11;
  c.hidden_size = 6;
  c.embedding_width = W;
  c.max_sequence_length = 5;
  c.type_vocab_size = 3;
  c.dropout = 0.2;
  c.init_stddev = 0.5;
  c.seed = 9;
  return c;
}

TEST(Embeddings, SumThenLayerNorm) {
  Embeddings emb(tiny(0));
  const Tensor ids({2, 5}, {1, 2, 3, 4, 5, 10, 0, 0, 7, 1}),
      types({2, 5}, {0, 1, 2, 0, 1, 2, 2, 0, 0, 1});
  Tensor out;
  emb.forward(ids, types, nullptr, nullptr, out, {});  // eval: no dropout
  Tensor sum({2, 5, 6});
  for (int64_t n = 0; n < 10; ++n)
    for (int64_t w = 0; w < 6; ++w)
      sum[n * 6 + w] = emb.word[static_cast<int64_t>(ids[n]) * 6 + w] +
                       emb.position[(n % 5) * 6 + w] +
                       emb.type[static_cast<int64_t>(types[n]) * 6 + w];
  LayerNorm ln(6, 1e-12);
  Tensor want;
  ln.forward(sum, want);
  EXPECT_LT(test::normalized_error(out, want), 1e-6);
}

TEST(Embeddings, LengthAndIdErrors) {
  Embeddings emb(tiny(0));
  Tensor out;
  try {
    emb.forward(Tensor({1, 4}), Tensor({1, 4}), nullptr, nullptr, out, {});
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("max_sequence_length=5"), std::string::npos) << e.what();
  }
  EXPECT_THROW(emb.forward(Tensor({1, 5}, 11.f), Tensor({1, 5}), nullptr, nullptr, out, {}),
               InvalidArgument);  // id >= vocab
  EXPECT_THROW(emb.forward(Tensor({1, 5}), Tensor({1, 5}, 3.f), nullptr, nullptr, out, {}),
               InvalidArgument);  // type id >= type_vocab_size
}

}  // namespace
}  // namespace sparsemoe
