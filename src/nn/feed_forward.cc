// FeedForward (dense FFN), the shared FFN config and the stacked FFN weights.
#include "sparsemoe/nn/feed_forward.h"

#include <algorithm>
#include <numeric>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/init.h"
#include "sparsemoe/core/rng.h"

namespace sparsemoe {

namespace {
constexpr uint64_t kInnerDropoutTag = 0x46464e31, kOutputDropoutTag = 0x46464e32;
}

FeedForwardConfig FeedForwardConfig::from_json(const nlohmann::json& j) {
  FeedForwardConfig c;
  config_read(j, "FeedForwardConfig", c);
  c.validate();
  return c;
}

FfnWeights::FfnWeights(const FeedForwardConfig& c, int64_t E_, int64_t H_, bool stacked_,
                       uint64_t seed_, int64_t first, int64_t count)
    : E(E_),
      H(H_),
      F(c.d_ff),
      glu(c.glu),
      activation(parse_activation(c.activation)),
      inner_dropout(static_cast<float>(c.inner_dropout)),
      output_dropout(static_cast<float>(c.output_dropout)),
      seed(seed_) {
  stacked = stacked_, use_bias = c.use_bias;
  sharded = count >= 0;
  expert0 = sharded ? first : 0, held = sharded ? count : E;
  check_arg(H >= 1, "hidden_size: expected >= 1, got " + std::to_string(H));
  check_arg(!sharded || (stacked && first >= 0 && first + count <= E),
            "FfnWeights: experts [" + std::to_string(first) + ", " + std::to_string(first + count) +
                ") are not among the " + std::to_string(E));
  auto sh = [&](Shape s) {
    if (stacked_) s.insert(s.begin(), held);
    return s;
  };
  const int64_t F1 = glu ? 2 * F : F;
  w1 = Tensor(sh({H, F1}));
  w2 = Tensor(sh({F, H}));
  b1 = Tensor(c.use_bias ? sh({F1}) : Shape{0});
  b2 = Tensor(c.use_bias ? sh({H}) : Shape{0});
  dw1 = Tensor(w1.shape()), dw2 = Tensor(w2.shape());
  db1 = Tensor(b1.shape()), db2 = Tensor(b2.shape());
  // A block of experts draws the whole tensors' values for them (counter-based init).
  fill_truncated_normal(w1, c.kernel_init_stddev, derive_key(seed, 0x5731), expert0 * H * F1);
  fill_truncated_normal(w2, c.kernel_init_stddev, derive_key(seed, 0x5732), expert0 * F * H);
}

FfnParams FfnWeights::params() const {
  FfnParams p;
  p.E = held, p.H = H, p.F = F;
  p.glu = glu;
  p.w1 = w1.data(), p.w2 = w2.data();
  p.b1 = b1.numel() ? b1.data() : nullptr;
  p.b2 = b2.numel() ? b2.data() : nullptr;
  p.activation = activation;
  p.inner_dropout = inner_dropout, p.output_dropout = output_dropout;
  if (!w1_packed.empty()) p.w1_packed = &w1_packed;
  if (!w2_packed.empty()) p.w2_packed = &w2_packed;
  return p;
}

FfnGrads FfnWeights::grads() {
  return {dw1.data(), db1.numel() ? db1.data() : nullptr, dw2.data(),
          db2.numel() ? db2.data() : nullptr};
}

void FfnWeights::zero_grads() {
  for (Tensor* t : {&dw1, &db1, &dw2, &db2}) t->zero();
}

void FfnWeights::prepare_inference() {
  const int64_t F1 = glu ? 2 * F : F;
  w1_packed.pack(held, H, F1, w1.data(), H * F1);
  w2_packed.pack(held, F, H, w2.data(), F * H);
}

void FfnWeights::keep_experts(int64_t first, int64_t count) {
  check_arg(stacked && first >= expert0 && count >= 0 && first + count <= expert0 + held,
            "FfnWeights::keep_experts: experts [" + std::to_string(first) + ", " +
                std::to_string(first + count) + ") are not among the held [" +
                std::to_string(expert0) + ", " + std::to_string(expert0 + held) + ")");
  release_inference();
  for (Tensor* t : {&w1, &b1, &w2, &b2, &dw1, &db1, &dw2, &db2}) {
    if (t->numel() == 0) continue;  // no biases
    const int64_t per = t->numel() / held;
    Shape s = t->shape();
    s[0] = count;
    Tensor kept(s);
    std::copy_n(t->data() + (first - expert0) * per, count * per, kept.data());
    *t = std::move(kept);
  }
  expert0 = first, held = count, sharded = true;
}

void FfnWeights::release_inference() {
  w1_packed.clear();
  w2_packed.clear();
}

std::vector<ParamRef> FfnWeights::refs() {
  release_inference();
  std::vector<ParamRef> r = {{"intermediate/kernel", &w1, &dw1}};
  if (use_bias) r.push_back({"intermediate/bias", &b1, &db1});
  r.push_back({"output/kernel", &w2, &dw2});
  if (use_bias) r.push_back({"output/bias", &b2, &db2});
  if (stacked)
    for (ParamRef& p : r) p.experts = E, p.expert0 = expert0, p.sharded = sharded;
  return r;
}

FeedForward::FeedForward(const FeedForwardConfig& config, int64_t hidden_size, uint64_t seed)
    : config_(config),
      weights_((config.validate("FeedForwardConfig"), config), 1, hidden_size, false, seed) {}

Shape FeedForward::output_shape(const Shape& input_shape) const {
  check_arg(!input_shape.empty() && input_shape.back() == weights_.H,
            "FeedForward input: expected shape [..., H=" + std::to_string(weights_.H) + "], got " +
                shape_str(input_shape));
  return input_shape;
}

void FeedForward::forward(const Tensor& x, Tensor& y, const ForwardOptions& opt) {
  output_shape(x.shape());
  const int64_t R = x.numel() / weights_.H;
  offsets_ = {0, R};
  // Dropout counters by global token (ForwardOptions::token_offset).
  const uint64_t first = static_cast<uint64_t>(opt.token_offset);
  if (static_cast<int64_t>(row_ids_.size()) != R || row_ids_.empty() || row_ids_[0] != first) {
    row_ids_.resize(R);
    std::iota(row_ids_.begin(), row_ids_.end(), first);
  }
  drop_ = {opt.training, derive_key(weights_.seed, kInnerDropoutTag, opt.step),
           derive_key(weights_.seed, kOutputDropoutTag, opt.step), row_ids_.data()};
  y.resize(x.shape());
  if (!opt.save_for_backward) {  // inference: nothing kept for a backward
    x_.resize({0});
    ffn_forward(weights_.params(), offsets_.data(), x.data(), y.data(), drop_, saved_, false);
    return;
  }
  x_.resize(x.shape());  // backward's dW1 = x^T dh: a copy, not a pointer into the caller's x
  std::copy_n(x.data(), x.numel(), x_.data());
  ffn_forward(weights_.params(), offsets_.data(), x_.data(), y.data(), drop_, saved_);
}

void FeedForward::backward(const Tensor& dy, Tensor& dx, GradMode mode) {
  weights_.release_inference();  // an optimizer step follows
  check_arg(x_.numel() > 0,
            "FeedForward::backward: call forward first (with ForwardOptions::save_for_backward)");
  check_shape("dy", dy.shape(), x_.shape());
  dx.resize(dy.shape());
  FfnGrads grads = weights_.grads();
  grads.overwrite = mode == GradMode::kOverwrite;
  ffn_backward(weights_.params(), offsets_.data(), x_.data(), dy.data(), dx.data(), drop_, saved_,
               grads);
}

}  // namespace sparsemoe
