// EncoderBlock: the tf-models quirk (MoE output replaces the residual stream) and the paper
// wiring differ exactly as documented. Gradients for every mixing kind and attention, dense FFN
// and MoE, in the three wirings: the harness's models/encoder_block cases.
#include <gtest/gtest.h>

#include "moe_fixtures.h"
#include "sparsemoe/models/encoder_block.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using test::random_tensor;

EncoderBlockConfig block(bool attention, MixingMechanism mix, bool moe, bool norm_first,
                         bool compat) {
  EncoderBlockConfig c;
  c.hidden_size = 8;
  c.seq_length = 4;
  c.attention = attention;
  c.mixing = mix;
  c.num_heads = 2;
  c.attention_dropout = 0.1;
  c.moe = moe;
  // Tokens-choose with room for every token: a routing decision then flips only when a token's
  // two expert probabilities tie, which keeps finite differences away from discontinuities (the
  // mixing couples all tokens, so an experts-choose ranking would flip far more easily).
  c.moe_layer = test::small_moe(RouterType::kTokensChoose, 2, 1, 2.0, 8, 6);
  c.moe_layer.experts.output_dropout = 0.1;
  c.ffn.d_ff = 6;
  c.ffn.activation = "gelu_tanh";
  c.ffn.output_dropout = 0.1;
  c.norm_first = norm_first;
  c.tf_models_compat = compat;
  c.init_stddev = 0.3;
  c.seed = 5;
  return c;
}

TEST(EncoderBlock, TfModelsMoeReplacesTheResidualStream) {
  // With tf_models_compat and post-LN, the block output is the MoE output itself: its layer norm
  // is unused, and the output is not normalised.
  EncoderBlock compat(block(false, MixingMechanism::kLinear, true, false, true));
  EncoderBlock paper(block(false, MixingMechanism::kLinear, true, false, false));
  size_t n_compat = compat.params().size(), n_paper = paper.params().size();
  EXPECT_EQ(n_paper, n_compat + 2);  // layer_norm_2/{gamma,beta}
  const Tensor x = random_tensor({2, 4, 8}, 1);
  Tensor y;
  paper.forward(x, nullptr, y, {});
  for (int64_t n = 0; n < 8; ++n) {  // paper: every row normalised (gamma 1, beta 0)
    double m = 0;
    for (int h = 0; h < 8; ++h) m += y[n * 8 + h];
    EXPECT_NEAR(m / 8, 0.0, 1e-5);
  }
}

}  // namespace
}  // namespace sparsemoe
