// EncoderBlock: finite-difference gradients for every mixing kind and attention, dense FFN and
// MoE, in the three wirings; the tf-models quirk (MoE output replaces the residual stream) and
// the paper wiring differ exactly as documented.
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

TEST(EncoderBlock, GradientsMatchFiniteDifferences) {
  const Tensor pad({2, 4}, {1, 1, 1, 0, 1, 1, 1, 1});
  const Tensor mask = attention_mask_from_padding(pad);
  int cases = 0;
  for (bool attention : {false, true})
    for (MixingMechanism mix :
         {MixingMechanism::kLinear, MixingMechanism::kFourier, MixingMechanism::kHartley}) {
      if (attention && mix != MixingMechanism::kLinear) continue;
      for (bool moe : {false, true})
        for (int wiring = 0; wiring < 3; ++wiring) {
          const bool norm_first = wiring == 2, compat = wiring == 1;
          EncoderBlock blk(block(attention, mix, moe, norm_first, compat));
          Tensor x = random_tensor({2, 4, 8}, 11, -0.3f, 0.3f), r = random_tensor({2, 4, 8}, 12), y,
                 dx;
          const ForwardOptions opt{true, 3};
          auto loss = [&] {
            const MoeMetrics m = blk.forward(x, attention ? &mask : nullptr, y, opt);
            return test::dot(y, r) + m.loss;
          };
          loss();
          zero_grads(blk.params());
          blk.backward(r, dx);
          const std::string what =
              std::string(attention ? "attention" : mixing_mechanism_name(mix)) +
              (moe ? " moe" : " ffn") + " wiring " + std::to_string(wiring);
          // The step: a float32 loss limits it from below (rounding noise / eps, which swamps
          // the small attention-kernel gradients at 3e-3), while an MoE after unnormalised
          // Fourier/Hartley/linear mixing needs a small one (its LayerNorm input is strongly
          // curved and routing can flip).
          const float eps = moe && !attention ? 3e-3f : 1e-2f;
          test::check_gradient(what + " x", x, dx, loss, 32, eps);
          for (auto& p : blk.params())
            test::check_gradient(what + " " + p.name, *p.value, *p.grad, loss, 12, eps);
          ++cases;
        }
    }
  EXPECT_EQ(cases, 24);
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
