// One Sparse Mixer layer in its three wirings (see encoder_block.h).
#include "sparsemoe/models/encoder_block.h"

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"

namespace sparsemoe {

namespace {

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  out.resize(a.shape());
  for (int64_t i = 0; i < a.numel(); ++i) out[i] = a[i] + b[i];
}

void add_into(Tensor& out, const Tensor& b) {
  for (int64_t i = 0; i < out.numel(); ++i) out[i] += b[i];
}

}  // namespace

EncoderBlock::EncoderBlock(const EncoderBlockConfig& c)
    : config_(c), ln1_(c.hidden_size, 1e-12), ln2_(c.hidden_size, 1e-12) {
  if (c.attention)
    attention_ = std::make_unique<SelfAttention>(c.hidden_size, c.num_heads, c.attention_dropout,
                                                 c.init_stddev, derive_key(c.seed, 1));
  else
    mixing_ = std::make_unique<MixingLayer>(c.mixing, c.seq_length, c.hidden_size, c.use_fft,
                                            c.init_stddev, derive_key(c.seed, 2));
  if (c.moe) {
    MoeLayerConfig m = c.moe_layer;
    m.hidden_size = c.hidden_size;
    m.seed = derive_key(c.seed, 3);
    moe_ = std::make_unique<MoeLayer>(m, c.placement);
  } else {
    FeedForwardConfig f = c.ffn;
    if (c.tf_models_compat) f.output_dropout = 0.0;  // the scaffold's filtered dropout_rate
    ffn_ = std::make_unique<FeedForward>(f, c.hidden_size, derive_key(c.seed, 4));
  }
  // tf-models with norm_first=false: the MoE output replaces the residual stream (no LN).
  if (c.tf_models_compat && !c.norm_first && c.moe) residual_ff_ = norm_ff_ = false;
}

int64_t EncoderBlock::prepare_inference() {
  int64_t bytes = 0;
  if (attention_) bytes += attention_->prepare_inference();
  if (ffn_) bytes += ffn_->prepare_inference();
  if (moe_) bytes += moe_->prepare_inference();
  return bytes;
}

std::vector<ParamRef> EncoderBlock::params() {
  std::vector<ParamRef> p;
  if (attention_)
    for (auto& r : prefixed("self_attention", attention_->params())) p.push_back(r);
  if (mixing_)
    for (auto& r : prefixed("mixing", mixing_->params())) p.push_back(r);
  for (auto& r : prefixed("layer_norm_1", ln1_.params())) p.push_back(r);
  if (norm_ff_)
    for (auto& r : prefixed("layer_norm_2", ln2_.params())) p.push_back(r);
  if (ffn_)
    for (auto& r : prefixed("feedforward", ffn_->params())) p.push_back(r);
  if (moe_)
    for (auto& r : prefixed("moe", moe_->params())) p.push_back(r);
  return p;
}

void EncoderBlock::mix_forward(const Tensor& in, const Tensor* mask, Tensor& out,
                               const ForwardOptions& opt) {
  if (attention_)
    attention_->forward(in, mask, out, opt);
  else
    mixing_->forward(in, out);
}

void EncoderBlock::mix_backward(const Tensor& d, Tensor& dx) {
  if (attention_)
    attention_->backward(d, dx);
  else
    mixing_->backward(d, dx);
}

MoeMetrics EncoderBlock::ff_forward(const Tensor& in, Tensor& out, const ForwardOptions& opt) {
  if (moe_) return moe_->forward(in, out, opt);
  ffn_->forward(in, out, opt);
  return {};
}

void EncoderBlock::ff_backward(const Tensor& d, Tensor& dx) {
  if (moe_)
    moe_->backward(d, dx);
  else
    ffn_->backward(d, dx);
}

MoeMetrics EncoderBlock::forward(const Tensor& x, const Tensor* mask, Tensor& y,
                                 const ForwardOptions& opt) {
  saved_ = false;
  const MoeMetrics met = forward_sublayers(x, mask, y, opt);
  saved_ = opt.save_for_backward;
  return met;
}

MoeMetrics EncoderBlock::forward_sublayers(const Tensor& x, const Tensor* mask, Tensor& y,
                                           const ForwardOptions& opt) {
  if (config_.norm_first) {
    // a = x + Mix(LN1(x)); y = a + F(LN2(a))
    ln1_.forward(x, n1_);
    mix_forward(n1_, mask, m_, opt);
    add(x, m_, a_);
    ln2_.forward(a_, n2_);
    const MoeMetrics met = ff_forward(n2_, f_, opt);
    add(a_, f_, y);
    return met;
  }
  // a = LN1(x + Mix(x)); y = LN2(a + F(a)), or y = F(a) (tf-models MoE).
  mix_forward(x, mask, m_, opt);
  add(x, m_, s1_);
  ln1_.forward(s1_, a_);
  if (!residual_ff_) return ff_forward(a_, y, opt);
  const MoeMetrics met = ff_forward(a_, f_, opt);
  add(a_, f_, s2_);
  ln2_.forward(s2_, y);
  return met;
}

void EncoderBlock::backward(const Tensor& dy, Tensor& dx) {
  // Checked before the layer norms add into their gradients.
  check_arg(saved_,
            "EncoderBlock::backward: call forward first (with ForwardOptions::save_for_backward)");
  if (config_.norm_first) {
    ff_backward(dy, g_);     // d n2
    ln2_.backward(g_, g2_);  // d a (through the FF branch)
    add_into(g2_, dy);       // + residual
    mix_backward(g2_, g3_);  // d n1
    ln1_.backward(g3_, dx);
    add_into(dx, g2_);  // + residual
    return;
  }
  const Tensor* da = &dy;
  if (residual_ff_) {
    ln2_.backward(dy, g_);  // d s2
    ff_backward(g_, g2_);   // d a through F
    add_into(g2_, g_);      // + residual
    da = &g2_;
  } else {
    ff_backward(dy, g2_);
    da = &g2_;
  }
  ln1_.backward(*da, g3_);  // d s1
  mix_backward(g3_, dx);
  add_into(dx, g3_);  // + residual
}

}  // namespace sparsemoe
