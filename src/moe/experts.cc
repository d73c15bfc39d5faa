// FeedForwardExperts and its config (see experts.h).
#include "sparsemoe/moe/experts.h"

#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/moe/streams.h"

namespace sparsemoe {

using moe_streams::kInnerDropoutTag, moe_streams::kOutputDropoutTag;

FeedForwardExpertsConfig FeedForwardExpertsConfig::from_json(const nlohmann::json& j) {
  FeedForwardExpertsConfig c;
  config_read(j, "FeedForwardExpertsConfig", c);
  c.validate();
  return c;
}

FeedForwardExperts::FeedForwardExperts(const FeedForwardExpertsConfig& config, int64_t hidden_size,
                                       uint64_t seed, int64_t first, int64_t count)
    : config_(config),
      weights_((config.validate(), config), config.num_experts, hidden_size, true, seed, first,
               count) {}

Shape FeedForwardExperts::output_shape(const Shape& s) const {
  check_arg(weights_.whole(),
            "FeedForwardExperts: the dense API needs every expert, and this "
            "process holds experts [" +
                std::to_string(weights_.expert0) + ", " +
                std::to_string(weights_.expert0 + weights_.held) + ") of " +
                std::to_string(weights_.E) + " (expert-sharded storage)");
  check_arg(s.size() == 4 && s[1] == weights_.E && s[3] == weights_.H,
            "FeedForwardExperts input: expected shape [G, E=" + std::to_string(weights_.E) +
                ", C, H=" + std::to_string(weights_.H) + "], got " + shape_str(s));
  return s;
}

FfnDropout FeedForwardExperts::dropout(const ForwardOptions& opt, const uint64_t* row_ids) const {
  return {opt.training, derive_key(weights_.seed, kInnerDropoutTag, opt.step),
          derive_key(weights_.seed, kOutputDropoutTag, opt.step), row_ids};
}

void FeedForwardExperts::forward(const Tensor& x, Tensor& y, const ForwardOptions& opt) {
  output_shape(x.shape());
  const int64_t G = x.dim(0), E = weights_.E, C = x.dim(2), H = weights_.H;
  dense_g_ = G, dense_c_ = C;
  // Expert-major rows: row (e, g, c) = (e*G + g)*C + c; its dropout id is the [G,E,C] index.
  dense_x_.resize({E * G * C, H});
  dense_y_.resize({E * G * C, H});
  dense_offsets_.resize(E + 1);
  dense_ids_.resize(E * G * C);
  for (int64_t e = 0; e <= E; ++e) dense_offsets_[e] = e * G * C;
  parallel_for(E * G, [&](int64_t eg) {
    const int64_t e = eg / G, g = eg % G;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = eg * C + c, src = (g * E + e) * C + c;
      dense_ids_[row] = static_cast<uint64_t>(src);
      std::copy_n(x.data() + src * H, H, dense_x_.data() + row * H);
    }
  });
  drop_ = dropout(opt, dense_ids_.data());
  ffn_forward(weights_.params(), dense_offsets_.data(), dense_x_.data(), dense_y_.data(), drop_,
              saved_);
  y.resize(x.shape());
  parallel_for(E * G * C, [&](int64_t row) {
    std::copy_n(dense_y_.data() + row * H, H, y.data() + dense_ids_[row] * H);
  });
}

void FeedForwardExperts::backward(const Tensor& dy, Tensor& dx) {
  weights_.release_inference();  // an optimizer step follows
  check_shape("dy", dy.shape(), {dense_g_, weights_.E, dense_c_, weights_.H}, "[G, E, C, H]");
  const int64_t H = weights_.H, R = dense_x_.dim(0);
  Tensor dys({R, H}), dxs({R, H});
  parallel_for(R, [&](int64_t row) {
    std::copy_n(dy.data() + dense_ids_[row] * H, H, dys.data() + row * H);
  });
  ffn_backward(weights_.params(), dense_offsets_.data(), dense_x_.data(), dys.data(), dxs.data(),
               drop_, saved_, weights_.grads());
  dx.resize(dy.shape());
  parallel_for(R, [&](int64_t row) {
    std::copy_n(dxs.data() + row * H, H, dx.data() + dense_ids_[row] * H);
  });
}

}  // namespace sparsemoe
