// Router forward/backward (see router.h).
#include "sparsemoe/routing/router.h"

#include <algorithm>
#include <cmath>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/kernels.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/routing/routers.h"

namespace sparsemoe {

std::string router_type_name(RouterType t) {
  switch (t) {
    case RouterType::kExpertsChoose:
      return "experts_choose";
    case RouterType::kTokensChoose:
      return "tokens_choose";
    case RouterType::kTop2:
      return "top2";
  }
  return "experts_choose";
}

RouterType parse_router_type(const std::string& name) {
  if (name == "experts_choose") return RouterType::kExpertsChoose;
  if (name == "tokens_choose") return RouterType::kTokensChoose;
  if (name == "top2") return RouterType::kTop2;
  throw ConfigError("router type: expected 'experts_choose', 'tokens_choose' or 'top2', got '" +
                    name + "'");
}

nlohmann::json RouterConfig::to_json() const {
  return {{"type", router_type_name(type)},
          {"num_experts", num_experts},
          {"num_selected_experts", num_selected_experts},
          {"batch_prioritized_routing", batch_prioritized_routing},
          {"use_bias", use_bias},
          {"jitter_noise", jitter_noise},
          {"router_z_loss_weight", router_z_loss_weight},
          {"load_balancing_loss_weight", load_balancing_loss_weight},
          {"kernel_init_stddev", kernel_init_stddev},
          {"second_expert_policy", second_expert_policy_name(top2.second_expert_policy)},
          {"second_expert_threshold", top2.second_expert_threshold},
          {"legacy_mtf_behavior", top2.legacy_mtf_behavior},
          {"expert_padding_idx", top2.expert_padding_idx},
          {"local_dispatch", local_dispatch},
          {"sample_in_eval", sample_in_eval}};
}

RouterConfig RouterConfig::from_json(const nlohmann::json& j) {
  RouterConfig c;
  JsonFields f(j, "RouterConfig");
  std::string type = router_type_name(c.type);
  f.read("type", type);
  c.type = parse_router_type(type);
  f.read("num_experts", c.num_experts);
  f.read("num_selected_experts", c.num_selected_experts);
  f.read("batch_prioritized_routing", c.batch_prioritized_routing);
  f.read("use_bias", c.use_bias);
  f.read("jitter_noise", c.jitter_noise);
  f.read("router_z_loss_weight", c.router_z_loss_weight);
  f.read("load_balancing_loss_weight", c.load_balancing_loss_weight);
  f.read("kernel_init_stddev", c.kernel_init_stddev);
  std::string policy = second_expert_policy_name(c.top2.second_expert_policy);
  f.read("second_expert_policy", policy);
  c.top2.second_expert_policy = parse_second_expert_policy(policy);
  f.read("second_expert_threshold", c.top2.second_expert_threshold);
  f.read("legacy_mtf_behavior", c.top2.legacy_mtf_behavior);
  f.read("expert_padding_idx", c.top2.expert_padding_idx);
  f.read("local_dispatch", c.local_dispatch);
  f.read("sample_in_eval", c.sample_in_eval);
  f.finish();
  c.validate();
  return c;
}

void RouterConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("RouterConfig: " + m); };
  if (num_experts < 1) bad("num_experts: expected >= 1, got " + std::to_string(num_experts));
  if (num_selected_experts < 1 || num_selected_experts > num_experts)
    bad("num_selected_experts: expected in [1, num_experts=" + std::to_string(num_experts) +
        "], got " + std::to_string(num_selected_experts));
  if (type == RouterType::kExpertsChoose && num_selected_experts != 1)
    bad("num_selected_experts applies to tokens_choose only (experts_choose takes top-C tokens)");
  if (!(jitter_noise >= 0 && jitter_noise < 1))
    bad("jitter_noise: expected in [0, 1), got " + std::to_string(jitter_noise));
  if (!(router_z_loss_weight >= 0)) bad("router_z_loss_weight: expected >= 0");
  if (!(load_balancing_loss_weight >= 0)) bad("load_balancing_loss_weight: expected >= 0");
  if (!(kernel_init_stddev >= 0)) bad("kernel_init_stddev: expected >= 0");
  if (type == RouterType::kTop2 && num_selected_experts != 1)
    bad("num_selected_experts applies to tokens_choose only (top2 always selects two experts)");
  if (!(top2.second_expert_threshold >= 0)) bad("second_expert_threshold: expected >= 0");
  for (int64_t e : top2.expert_padding_idx)
    if (e < 0 || e >= num_experts)
      bad("expert_padding_idx: expected entries in [0, num_experts=" + std::to_string(num_experts) +
          "), got " + std::to_string(e));
  if (type != RouterType::kTop2 && (!top2.expert_padding_idx.empty() || !local_dispatch))
    bad("expert_padding_idx and local_dispatch apply to router type 'top2' only");
}

void fill_normal(Tensor& t, double stddev, uint64_t key, double truncate_at) {
  float* d = t.data();
  parallel_for_range(t.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double z = 0;
      for (uint64_t attempt = 0;; ++attempt) {  // Box-Muller; resample outside the truncation
        const uint64_t c = (static_cast<uint64_t>(i) << 8 | attempt) * 2;
        const double u1 = (uniform01(key, c) + 0.5 / 16777216.0), u2 = uniform01(key, c + 1);
        z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
        if (truncate_at <= 0 || std::fabs(z) < truncate_at || attempt == 255) break;
      }
      d[i] = static_cast<float>(z * stddev);
    }
  });
}

void fill_truncated_normal(Tensor& t, double stddev, uint64_t key) {
  fill_normal(t, stddev, key, 2.0);
}

Router::Router(const RouterConfig& config, int64_t hidden_size, uint64_t seed)
    : kernel({hidden_size, config.num_experts}),
      bias({config.use_bias ? config.num_experts : 0}),
      kernel_grad({hidden_size, config.num_experts}),
      bias_grad({config.use_bias ? config.num_experts : 0}),
      config_(config),
      hidden_(hidden_size) {
  config_.validate();
  check_arg(hidden_size >= 1, "hidden_size: expected >= 1, got " + std::to_string(hidden_size));
  fill_truncated_normal(kernel, config.kernel_init_stddev, derive_key(seed, 0x524f55544552ull));
}

RouterLosses Router::forward(const float* x, int64_t G, int64_t T, int64_t C, bool training,
                             uint64_t key, const float* paddings) {
  const int64_t E = config_.num_experts, H = hidden_, N = G * T;
  check_arg(paddings == nullptr || config_.type == RouterType::kTop2,
            "paddings: supported by router type 'top2' only, the router is '" +
                router_type_name(config_.type) + "'");
  n_ = N, groups_ = G, tokens_ = T, x_ = x;
  jittered_ = training && config_.jitter_noise > 0;
  jitter_key_ = key;
  const uint64_t jitter_key = key;
  const float* xin = x;
  if (jittered_) {
    x_jit_.resize({N, H});
    const float eps = static_cast<float>(config_.jitter_noise);
    float* xj = x_jit_.data();
    parallel_for_range(N * H, 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        xj[i] = x[i] * (1.f - eps + 2.f * eps * uniform01(jitter_key, static_cast<uint64_t>(i)));
    });
    xin = xj;
  }
  logits_.resize({N, E});
  probs_.resize({N, E});
  lse_.resize({N});
  matmul(N, E, H, xin, kernel.data(), logits_.data());
  float* lg = logits_.data();
  float* pr = probs_.data();
  float* ls = lse_.data();
  // top2 with padded experts: the z-loss keeps the router's real logits (lse), while the gate
  // softmaxes a masked copy.
  const bool masked = config_.type == RouterType::kTop2 && !config_.top2.expert_padding_idx.empty();
  if (masked) gate_logits_.resize({N, E});
  float* gl = masked ? gate_logits_.data() : lg;
  parallel_for_range(N, 1024, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      float* row = lg + n * E;
      if (config_.use_bias)
        for (int64_t j = 0; j < E; ++j) row[j] += bias[j];
      ls[n] = logsumexp(row, E);
      float m = ls[n];
      if (masked) {
        std::copy(row, row + E, gl + n * E);
        mask_padded_experts(gl + n * E, 1, E, config_.top2);
        m = logsumexp(gl + n * E, E);
      }
      for (int64_t j = 0; j < E; ++j) pr[n * E + j] = std::exp(gl[n * E + j] - m);
    }
  });
  RouterLosses out;
  double z = 0;
  for (int64_t n = 0; n < N; ++n) z += static_cast<double>(ls[n]) * ls[n];
  out.unscaled_router_z_loss = N ? z / N : 0.0;
  out.router_z_loss = config_.router_z_loss_weight * out.unscaled_router_z_loss;

  if (config_.type == RouterType::kTop2) {
    for (int64_t i = 0; paddings && i < N; ++i)
      check_arg(paddings[i] == 0.f || paddings[i] == 1.f, "paddings: expected 0 or 1 at token " +
                                                              std::to_string(i) + ", got " +
                                                              std::to_string(paddings[i]));
    const bool sample = training || config_.sample_in_eval;
    route_top2(pr, gl, paddings, nullptr, G, T, E, C, config_.top2, sample,
               derive_key(key, 0x544f5032), plan_, top2_);
    out.load_balancing_loss = plan_.aux_loss;
    out.over_capacity_1_ratio = top2_.over_capacity_1_ratio;
    out.over_capacity_2_ratio = top2_.over_capacity_2_ratio;
    return out;
  }
  if (config_.type == RouterType::kExpertsChoose) {
    check_arg(C >= 0,
              "dropless routing is defined for tokens_choose only; experts_choose always "
              "fills exactly C slots per expert");
    route_experts_choose(pr, G, T, E, C, plan_);
  } else {
    route_tokens_choose(pr, G, T, E, C, config_.num_selected_experts,
                        config_.batch_prioritized_routing, plan_);
  }
  out.load_balancing_loss = plan_.aux_loss;
  return out;
}

void Router::backward(const float* dcombine, float* dx) {
  const int64_t E = config_.num_experts, H = hidden_, N = n_;
  dlogits_.resize({N, E});
  float* dl = dlogits_.data();
  const float* pr = probs_.data();
  const float* lg = logits_.data();
  const float* ls = lse_.data();
  // Experts-choose and tokens-choose combine with the probability itself: dprobs = dcombine.
  // Top-2 combines with renormalised gates and adds its own aux loss gradient.
  const float* dprobs = dcombine;
  if (config_.type == RouterType::kTop2) {
    dprobs_.resize({N, E});
    route_top2_backward(top2_, dcombine, config_.load_balancing_loss_weight, dprobs_.data());
    dprobs = dprobs_.data();
  }
  // d aux / d p[g,t,e] = E * density[g,e] / (G*T); d z / d logit[n,e] = 2/N * lse[n] *
  // softmax(logits)[n,e] (the real logits: for top2 with padded experts, not the gate's probs).
  const double lb_scale = config_.load_balancing_loss_weight * E / static_cast<double>(N);
  const double z_scale = config_.router_z_loss_weight * 2.0 / static_cast<double>(N);
  const bool lb = config_.type == RouterType::kTokensChoose && lb_scale != 0;
  parallel_for_range(N, 1024, [&](int64_t b, int64_t e) {
    std::vector<double> dp(E);
    for (int64_t n = b; n < e; ++n) {
      const int64_t g = n / tokens_;
      double dot = 0;
      for (int64_t j = 0; j < E; ++j) {
        dp[j] = dprobs[n * E + j];
        if (lb) dp[j] += lb_scale * plan_.density[g * E + j];
        dot += dp[j] * pr[n * E + j];
      }
      for (int64_t j = 0; j < E; ++j) {
        const double p = pr[n * E + j];
        const double pz = z_scale != 0 ? std::exp(static_cast<double>(lg[n * E + j]) - ls[n]) : 0;
        dl[n * E + j] = static_cast<float>(p * (dp[j] - dot) + z_scale * ls[n] * pz);
      }
    }
  });
  const float* xin = jittered_ ? x_jit_.data() : x_;
  // kernel_grad [H, E] += xin^T [H, N] . dlogits [N, E]; parallel over fixed H tiles.
  constexpr int64_t kTile = 64;
  parallel_for((H + kTile - 1) / kTile, [&](int64_t i) {
    const int64_t h0 = i * kTile, rows = std::min(kTile, H - h0);
    gemm(true, false, rows, E, N, 1.f, xin + h0, H, dl, E, 1.f, kernel_grad.data() + h0 * E, E);
  });
  if (config_.use_bias)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < E; ++j) bias_grad[j] += dl[n * E + j];
  // dx [N, H] += (dlogits . kernel^T) * jitter_noise
  const float eps = static_cast<float>(config_.jitter_noise);
  dx_tmp_.resize({N, H});
  parallel_for_range(N, 256, [&](int64_t b, int64_t e) {
    float* tmp = dx_tmp_.data() + b * H;
    gemm(false, true, e - b, H, E, 1.f, dl + b * E, E, kernel.data(), E, 0.f, tmp, H);
    for (int64_t i = 0; i < (e - b) * H; ++i) {
      const int64_t flat = b * H + i;
      const float noise =
          jittered_ ? 1.f - eps + 2.f * eps * uniform01(jitter_key_, static_cast<uint64_t>(flat))
                    : 1.f;
      dx[flat] += tmp[i] * noise;
    }
  });
}

}  // namespace sparsemoe
