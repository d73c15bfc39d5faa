// The plain-loop MoE layer (see moe_reference.h). Each stage follows the reference sources'
// formulation over dense tensors; sums are in double, in index order.
#include "sparsemoe/reference/moe_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/moe/streams.h"
#include "sparsemoe/ops/kernels.h"

namespace sparsemoe {

using namespace moe_streams;

namespace {

constexpr double kVeryNegative = -0.7 * std::numeric_limits<float>::max();

// Python's round(): half to even.
int64_t round_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

int64_t arg(int64_t g, int64_t t, int64_t e, int64_t c, int64_t T, int64_t E, int64_t C) {
  return ((g * T + t) * E + e) * C + c;
}

}  // namespace

float MoeReference::noise(int64_t i) const {
  if (!jittered_) return 1.f;
  return 1.f - eps_ + 2.f * eps_ * uniform01(jitter_key_, static_cast<uint64_t>(i));
}

MoeReference::MoeReference(const MoeLayerConfig& config)
    : c_((config.validate(), config)),
      H_(config.hidden_size),
      E_(config.experts.num_experts),
      F_(config.experts.d_ff),
      F1_(config.experts.glu ? 2 * config.experts.d_ff : config.experts.d_ff) {
  kernel_ = Tensor({H_, E_}), dkernel_ = Tensor({H_, E_});
  if (c_.router.use_bias) bias_ = Tensor({E_}), dbias_ = Tensor({E_});
  w1_ = Tensor({E_, H_, F1_}), dw1_ = Tensor({E_, H_, F1_});
  w2_ = Tensor({E_, F_, H_}), dw2_ = Tensor({E_, F_, H_});
  if (c_.experts.use_bias) {
    b1_ = Tensor({E_, F1_}), db1_ = Tensor({E_, F1_});
    b2_ = Tensor({E_, H_}), db2_ = Tensor({E_, H_});
  }
}

std::vector<ParamRef> MoeReference::params() {
  std::vector<ParamRef> p = {{"router/router_weights/kernel", &kernel_, &dkernel_}};
  if (bias_.numel()) p.push_back({"router/router_weights/bias", &bias_, &dbias_});
  p.push_back({"experts/intermediate/kernel", &w1_, &dw1_});
  if (b1_.numel()) p.push_back({"experts/intermediate/bias", &b1_, &db1_});
  p.push_back({"experts/output/kernel", &w2_, &dw2_});
  if (b2_.numel()) p.push_back({"experts/output/bias", &b2_, &db2_});
  return p;
}

void MoeReference::copy_weights(const std::vector<ParamRef>& from) {
  for (const ParamRef& mine : params()) {
    const auto it = std::find_if(from.begin(), from.end(),
                                 [&](const ParamRef& r) { return r.name == mine.name; });
    check_arg(it != from.end(), "MoeReference::copy_weights: no weight '" + mine.name + "'");
    check_shape(mine.name, it->value->shape(), mine.value->shape(), "");
    std::copy_n(it->value->data(), mine.value->numel(), mine.value->data());
  }
}

MoeMetrics MoeReference::forward(const Tensor& x, Tensor& y, const ForwardOptions& opt) {
  check_arg(x.rank() == 3 && x.dim(2) == H_,
            "MoeReference input: expected shape [B, L, H=" + std::to_string(H_) + "], got " +
                shape_str(x.shape()));
  const int64_t B = x.dim(0), L = x.dim(1), N = B * L, H = H_, E = E_, F = F_, F1 = F1_;
  // Groups of T = int(L * examples_per_group) tokens; lingvo's local_dispatch=false: one group.
  const auto T = static_cast<int64_t>(static_cast<double>(L) * c_.examples_per_group);
  check_arg(T >= 1 && N % T == 0, "MoeReference: examples_per_group gives no whole groups");
  const bool merge = !c_.router.local_dispatch;
  G_ = merge ? 1 : N / T, T_ = merge ? N : T;
  x_shape_ = x.shape();

  // The gate: x (times the jitter noise) . kernel + bias, softmax over the experts (those in
  // expert_padding_idx masked), the z-loss from the unmasked logits.
  jittered_ = opt.training && c_.router.jitter_noise > 0;
  jitter_key_ = derive_key(c_.seed, kJitterTag, opt.step);
  eps_ = static_cast<float>(c_.router.jitter_noise);
  gate_in_.assign(N * H, 0.0);
  for (int64_t i = 0; i < N * H; ++i) gate_in_[i] = x[i] * static_cast<double>(noise(i));
  logits_.assign(N * E, 0.0);
  lse_.assign(N, 0.0);
  probs_.assign(N * E, 0.0);
  double z = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t e = 0; e < E; ++e) {
      double acc = bias_.numel() ? bias_[e] : 0.0;
      for (int64_t h = 0; h < H; ++h) acc += gate_in_[n * H + h] * kernel_[h * E + e];
      logits_[n * E + e] = acc;
    }
    auto lse = [&](const std::vector<double>& l) {
      const double m = *std::max_element(l.begin(), l.end());
      double s = 0;
      for (double v : l) s += std::exp(v - m);
      return m + std::log(s);
    };
    std::vector<double> l(logits_.begin() + n * E, logits_.begin() + (n + 1) * E);
    lse_[n] = lse(l);
    z += lse_[n] * lse_[n];
    for (int64_t p : c_.router.top2.expert_padding_idx) l[p] = kVeryNegative;
    const double lm = lse(l);
    for (int64_t e = 0; e < E; ++e) probs_[n * E + e] = std::exp(l[e] - lm);
  }

  // The router: dispatch and combine [G, T, E, C].
  check_arg(!opt.paddings || c_.router.type == RouterType::kTop2,
            "MoeReference: paddings are for top2 only");
  const bool sample = opt.training || c_.router.sample_in_eval;
  route(opt.paddings ? opt.paddings->data() : nullptr, opt.training, sample,
        derive_key(jitter_key_, kTop2Stream));
  const int64_t G = G_, C = C_;
  metrics_.unscaled_router_z_loss = z / static_cast<double>(N);
  metrics_.router_z_loss = c_.router.router_z_loss_weight * metrics_.unscaled_router_z_loss;
  metrics_.loss =
      c_.router.load_balancing_loss_weight * metrics_.load_balancing_loss + metrics_.router_z_loss;
  metrics_.num_groups = G, metrics_.tokens_per_group = T_, metrics_.expert_capacity = C;

  // expert_in[g,e,c,h] = sum_t dispatch[g,t,e,c] x[g,t,h]
  const float* D = dispatch_.data();
  const float* W = combine_.data();
  expert_in_.assign(G * E * C * H, 0.0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h) {
          double acc = 0;
          for (int64_t t = 0; t < T_; ++t)
            acc += D[arg(g, t, e, c, T_, E, C)] * x[(g * T_ + t) * H + h];
          expert_in_[((g * E + e) * C + c) * H + h] = acc;
        }
  // Every expert on every slot: h = in . W1 + b1, a = act(h) (GLU: times the linear half),
  // inner dropout, out = a . W2 + b2, output dropout. Slot (g, e, c) draws with id (g*E+e)*C+c.
  dropout_ = opt.training;
  const uint64_t expert_seed = derive_key(c_.seed, kExpertsTag);
  inner_key_ = derive_key(expert_seed, kInnerDropoutTag, opt.step);
  output_key_ = derive_key(expert_seed, kOutputDropoutTag, opt.step);
  const auto act = parse_activation(c_.experts.activation);
  const auto pin = static_cast<float>(c_.experts.inner_dropout),
             pout = static_cast<float>(c_.experts.output_dropout);
  h_.assign(G * E * C * F1, 0.0);
  a_.assign(G * E * C * F, 0.0);
  expert_out_.assign(G * E * C * H, 0.0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t id = (g * E + e) * C + c;
        for (int64_t j = 0; j < F1; ++j) {
          double acc = b1_.numel() ? b1_[e * F1 + j] : 0.0;
          for (int64_t h = 0; h < H; ++h) acc += expert_in_[id * H + h] * w1_[(e * H + h) * F1 + j];
          h_[id * F1 + j] = acc;
        }
        for (int64_t f = 0; f < F; ++f) {
          double a = activate(act, static_cast<float>(h_[id * F1 + f]));
          if (c_.experts.glu) a *= h_[id * F1 + F + f];
          if (dropout_ && pin > 0)
            a = dropout_keep(inner_key_, id * F + f, pin) ? a * dropout_scale(pin) : 0.0;
          a_[id * F + f] = a;
        }
        for (int64_t h = 0; h < H; ++h) {
          double acc = b2_.numel() ? b2_[e * H + h] : 0.0;
          for (int64_t f = 0; f < F; ++f) acc += a_[id * F + f] * w2_[(e * F + f) * H + h];
          if (dropout_ && pout > 0)
            acc = dropout_keep(output_key_, id * H + h, pout) ? acc * dropout_scale(pout) : 0.0;
          expert_out_[id * H + h] = acc;
        }
      }
  // y[g,t,h] = sum_{e,c} combine[g,t,e,c] expert_out[g,e,c,h]
  y.resize(x.shape());
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double acc = 0;
        for (int64_t e = 0; e < E; ++e)
          for (int64_t c = 0; c < C; ++c)
            acc += W[arg(g, t, e, c, T_, E, C)] * expert_out_[((g * E + e) * C + c) * H + h];
        y[(g * T_ + t) * H + h] = static_cast<float>(acc);
      }
  return metrics_;
}

void MoeReference::route(const float* paddings, bool training, bool sample, uint64_t key) {
  const int64_t G = G_, T = T_, E = E_;
  const double cf = training ? c_.train_capacity_factor : c_.eval_capacity_factor;
  const auto type = c_.router.type;
  const double* P = probs_.data();
  auto p = [&](int64_t g, int64_t t, int64_t e) { return P[(g * T + t) * E + e]; };
  // Each choice: (g, t, e, position, weight); positions >= C are dropped.
  struct Choice {
    int64_t g, t, e, pos;
    double w;
  };
  std::vector<Choice> choices;
  metrics_ = {};
  density_.assign(G * E, 0.0);
  int64_t valid = G * T;

  if (type == RouterType::kExpertsChoose) {
    // Each (g, e) takes its C most probable tokens (ties: the lower token), in that order.
    C_ = std::max(round_even(cf * T / E), c_.min_expert_capacity);
    check_arg(C_ <= T, "MoeReference: experts_choose needs C <= T");
    for (int64_t g = 0; g < G; ++g)
      for (int64_t e = 0; e < E; ++e) {
        std::vector<int64_t> order(T);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return p(g, a, e) > p(g, b, e); });
        for (int64_t c = 0; c < C_; ++c) choices.push_back({g, order[c], e, c, p(g, order[c], e)});
      }
  } else if (type == RouterType::kTokensChoose) {
    // Each token's k most probable experts (ties: the lower expert); all first choices take
    // positions before any second choice, tokens in order (or by descending top-1 probability);
    // the aux loss E * mean_g sum_e density[g,e] * mean_t p[g,t,e], density the top-k fraction.
    const int64_t k = c_.router.num_selected_experts;
    std::vector<int64_t> top(G * T * k);
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t t = 0; t < T; ++t) {
        std::vector<int64_t> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return p(g, t, a) > p(g, t, b); });
        for (int64_t j = 0; j < k; ++j) {
          top[(g * T + t) * k + j] = order[j];
          density_[g * E + order[j]] += 1.0 / T;
        }
      }
      for (int64_t e = 0; e < E; ++e) {
        double mean = 0;
        for (int64_t t = 0; t < T; ++t) mean += p(g, t, e) / T;
        metrics_.load_balancing_loss += static_cast<double>(E) / G * density_[g * E + e] * mean;
      }
      std::vector<int64_t> order(T);
      std::iota(order.begin(), order.end(), 0);
      if (c_.router.batch_prioritized_routing)
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
          return p(g, a, top[(g * T + a) * k]) > p(g, b, top[(g * T + b) * k]);
        });
      std::vector<int64_t> count(E, 0);
      for (int64_t j = 0; j < k; ++j)
        for (int64_t t : order) {
          const int64_t e = top[(g * T + t) * k + j];
          choices.push_back({g, t, e, count[e]++, p(g, t, e)});
        }
    }
    if (c_.dropless) {
      C_ = 0;
      for (const Choice& ch : choices) C_ = std::max(C_, ch.pos + 1);
    } else {
      C_ = std::max(round_even(cf * T / E), c_.min_expert_capacity);
    }
  } else {
    // lingvo's Top2GatingOnLogits: the first expert by argmax, the second by the policy; first
    // choices take positions in token order, second choices after the kept first choices; the
    // gates renormalised before (legacy) or after the capacity drop; the top-1 aux loss.
    int64_t C = c_.expert_capacity_dim;
    if (cf > 0) {
      int64_t autoc = static_cast<int64_t>(static_cast<double>(T) * cf / E);
      if (autoc == 0) autoc = 4;
      C = c_.expert_capacity_dim >= autoc ? c_.expert_capacity_dim : (autoc + 3) / 4 * 4;
    }
    C_ = C;
    const Top2Options& o = c_.router.top2;
    const bool legacy = o.legacy_mtf_behavior;
    const bool sampling = sample && o.second_expert_policy == SecondExpertPolicy::kSampling;
    const bool random = sample && o.second_expert_policy == SecondExpertPolicy::kRandom;
    const double threshold = std::max(o.second_expert_threshold, 1e-9);
    const uint64_t gumbel_key = derive_key(key, kGumbelStream);
    const uint64_t random_key = derive_key(key, kRandomStream);
    top2_.assign(G * T, {});
    denom_.assign(G, 1.0);
    valid = 0;
    int64_t over1 = 0, over2 = 0, sum1 = 0, sum2 = 0;
    for (int64_t g = 0; g < G; ++g) {
      std::vector<double> imp(T);
      double imp_sum = 0;
      for (int64_t t = 0; t < T; ++t) {
        imp[t] = paddings ? 1.0 - paddings[g * T + t] : 1.0;
        imp_sum += imp[t];
        valid += imp[t] == 1.0;
      }
      if (!legacy) denom_[g] = imp_sum / T + 1e-6;
      std::vector<double> proxy(E, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        Top2Token& k = top2_[g * T + t];
        const int64_t n = g * T + t;
        const bool m1 = imp[t] == 1.0, m2 = imp[t] > 0.0;
        for (int64_t e = 1; e < E; ++e)
          if (p(g, t, e) > p(g, t, k.e1)) k.e1 = e;
        k.live1 = m1;
        k.p1 = m1 ? p(g, t, k.e1) : 0.0;
        if (m1) {
          density_[g * E + k.e1] += 1.0;
          for (int64_t e = 0; e < E; ++e) proxy[e] += p(g, t, e);
        }
        if (sampling) {
          double best = 0;
          for (int64_t e = 0; e < E; ++e) {
            const float u = uniform01(gumbel_key, static_cast<uint64_t>(n * E + e));
            const double gumbel = -std::log(-std::log(u + 0.5 / 16777216.0));
            double l = logits_[n * E + e];
            for (int64_t q : o.expert_padding_idx) l = q == e ? kVeryNegative : l;
            const double v = (m1 && e == k.e1 ? kVeryNegative : l) + gumbel;
            if (e == 0 || v > best) best = v, k.e2 = e;
          }
        } else {
          auto rest = [&](int64_t e) { return m1 && e == k.e1 ? 0.0 : p(g, t, e); };
          for (int64_t e = 1; e < E; ++e)
            if (rest(e) > rest(k.e2)) k.e2 = e;
        }
        k.live2 = m2 && !(m1 && k.e2 == k.e1);
        k.p2 = k.live2 ? p(g, t, k.e2) : 0.0;
      }
      for (int64_t e = 0; e < E; ++e) {
        density_[g * E + e] /= T * denom_[g];
        metrics_.load_balancing_loss +=
            static_cast<double>(E) / G * density_[g * E + e] * (proxy[e] / T / denom_[g]);
      }
      std::vector<int64_t> count(E, 0), kept1(E, 0), count2(E, 0);
      for (int64_t t = 0; t < T; ++t) {
        Top2Token& k = top2_[g * T + t];
        if (imp[t] != 1.0) continue;
        k.pos1 = count[k.e1]++;
        k.kept1 = k.pos1 < C;
        kept1[k.e1] += k.kept1;
        ++sum1, over1 += !k.kept1;
      }
      for (int64_t t = 0; t < T; ++t) {
        Top2Token& k = top2_[g * T + t];
        if (!(imp[t] > 0.0)) continue;
        if (random) {
          const double g2 = legacy ? k.p2 / (k.p1 + k.p2 + 1e-9) : k.p2;
          if (!(uniform01(random_key, static_cast<uint64_t>(g * T + t)) < g2 / threshold)) continue;
        }
        k.pos2 = count2[k.e2]++ + kept1[k.e2];
        k.kept2 = k.pos2 < C;
        ++sum2, over2 += !k.kept2;
      }
      for (int64_t t = 0; t < T; ++t) {
        const Top2Token& k = top2_[g * T + t];
        double w1, w2;
        if (legacy) {
          const double d = k.p1 + k.p2 + 1e-9;
          w1 = k.kept1 ? k.p1 / d : 0.0;
          w2 = k.kept2 ? k.p2 / d : 0.0;
        } else {
          const double a = k.kept1 ? k.p1 : 0.0, b = k.kept2 ? k.p2 : 0.0;
          const double d = a + b > 0 ? a + b : 1.0;
          w1 = a / d, w2 = b / d;
        }
        if (w1 != 0) choices.push_back({g, t, k.e1, k.pos1, w1});
        if (w2 != 0) choices.push_back({g, t, k.e2, k.pos2, w2});
      }
    }
    if (C == 0) over1 = over2 = G * T * E;
    metrics_.over_capacity_1_ratio = static_cast<double>(over1) / std::max<int64_t>(1, sum1);
    metrics_.over_capacity_2_ratio = static_cast<double>(over2) / std::max<int64_t>(1, sum2);
  }

  // The dense masks and the metrics.
  const int64_t C = C_;
  dispatch_ = Tensor({G, T, E, C});
  combine_ = Tensor({G, T, E, C});
  metrics_.tokens_per_expert.assign(E, 0);
  int64_t rows = 0;
  double weight_sum = 0;
  std::vector<uint8_t> dispatched(G * T, 0);
  for (const Choice& ch : choices) {
    if (ch.pos >= C) continue;
    dispatch_[arg(ch.g, ch.t, ch.e, ch.pos, T, E, C)] = 1.f;
    combine_[arg(ch.g, ch.t, ch.e, ch.pos, T, E, C)] = static_cast<float>(ch.w);
    ++metrics_.tokens_per_expert[ch.e];
    ++rows, weight_sum += static_cast<float>(ch.w);
    dispatched[ch.g * T + ch.t] = 1;
  }
  const int64_t sent = std::accumulate(dispatched.begin(), dispatched.end(), int64_t{0});
  metrics_.fraction_tokens_left_behind = valid ? 1.0 - static_cast<double>(sent) / valid : 0.0;
  metrics_.router_confidence = rows ? weight_sum / rows : 0.0;
  metrics_.expert_usage = G * E * C > 0 ? static_cast<double>(rows) / (G * E * C) : 0.0;
}

void MoeReference::route_backward(const std::vector<double>& dcombine, double loss_scale,
                                  std::vector<double>& dprobs) const {
  const int64_t G = G_, T = T_, E = E_, C = C_;
  const double lbw = c_.router.load_balancing_loss_weight * loss_scale;
  dprobs.assign(G * T * E, 0.0);
  if (c_.router.type != RouterType::kTop2) {
    // combine = p * dispatch; d aux / d p[g,t,e] = E/G * density[g,e] / T (tokens-choose).
    const bool aux = c_.router.type == RouterType::kTokensChoose;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e) {
          double d = aux ? lbw * E / G * density_[g * E + e] / T : 0.0;
          for (int64_t c = 0; c < C; ++c)
            d += dcombine[arg(g, t, e, c, T, E, C)] * dispatch_[arg(g, t, e, c, T, E, C)];
          dprobs[(g * T + t) * E + e] = d;
        }
    return;
  }
  const bool legacy = c_.router.top2.legacy_mtf_behavior;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t) {
      const Top2Token& k = top2_[g * T + t];
      double* dp = dprobs.data() + (g * T + t) * E;
      // d aux / d p[g,t,e] = E/G * density[g,e] / (T * denom[g]) for tokens with a live first.
      for (int64_t e = 0; e < E; ++e)
        dp[e] = k.live1 ? lbw * E / G * density_[g * E + e] / (T * denom_[g]) : 0.0;
      auto dw = [&](bool kept, int64_t e, int64_t pos) {
        if (!kept || combine_[arg(g, t, e, pos, T, E, C)] == 0.f) return 0.0;
        return dcombine[arg(g, t, e, pos, T, E, C)];
      };
      const double dw1 = dw(k.kept1, k.e1, k.pos1), dw2 = dw(k.kept2, k.e2, k.pos2);
      double dp1 = 0, dp2 = 0;
      if (legacy) {  // w1 = p1 / d, w2 = p2 / d, d = p1 + p2 + 1e-9
        const double d = k.p1 + k.p2 + 1e-9;
        dp1 = (dw1 * (d - k.p1) - dw2 * k.p2) / (d * d);
        dp2 = (dw2 * (d - k.p2) - dw1 * k.p1) / (d * d);
      } else {  // w1 = a / (a + b), w2 = b / (a + b) over the kept gates
        const double a = k.kept1 ? k.p1 : 0.0, b = k.kept2 ? k.p2 : 0.0, d = a + b;
        if (d > 0) {
          dp1 = k.kept1 ? b * (dw1 - dw2) / (d * d) : 0.0;
          dp2 = k.kept2 ? a * (dw2 - dw1) / (d * d) : 0.0;
        }
      }
      if (k.live1) dp[k.e1] += dp1;
      if (k.live2) dp[k.e2] += dp2;
    }
}

void MoeReference::backward(const Tensor& dy, Tensor& dx, double loss_scale) {
  check_arg(!x_shape_.empty(), "MoeReference::backward: call forward first");
  check_shape("dy", dy.shape(), x_shape_, "[B, L, H]");
  const int64_t G = G_, T = T_, E = E_, C = C_, H = H_, F = F_, F1 = F1_, N = G * T;
  const float* D = dispatch_.data();
  const float* W = combine_.data();
  // dcombine[g,t,e,c] = sum_h dy[g,t,h] out[g,e,c,h]; dout[g,e,c,h] = sum_t combine dy[g,t,h]
  std::vector<double> dcombine(G * T * E * C, 0.0), dout(G * E * C * H, 0.0), din(G * E * C * H);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t m = arg(g, t, e, c, T, E, C), id = (g * E + e) * C + c;
          for (int64_t h = 0; h < H; ++h) {
            dcombine[m] += dy[(g * T + t) * H + h] * expert_out_[id * H + h];
            dout[id * H + h] += W[m] * dy[(g * T + t) * H + h];
          }
        }
  // The experts, slot by slot.
  const auto act = parse_activation(c_.experts.activation);
  const auto pin = static_cast<float>(c_.experts.inner_dropout),
             pout = static_cast<float>(c_.experts.output_dropout);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t id = (g * E + e) * C + c;
        std::vector<double> g2(H), dh(F1);
        for (int64_t h = 0; h < H; ++h) {
          double v = dout[id * H + h];
          if (dropout_ && pout > 0)
            v = dropout_keep(output_key_, id * H + h, pout) ? v * dropout_scale(pout) : 0.0;
          g2[h] = v;
          if (db2_.numel()) db2_[e * H + h] += static_cast<float>(v);
        }
        for (int64_t f = 0; f < F; ++f) {
          double da = 0;
          for (int64_t h = 0; h < H; ++h) {
            da += g2[h] * w2_[(e * F + f) * H + h];
            dw2_[(e * F + f) * H + h] += static_cast<float>(a_[id * F + f] * g2[h]);
          }
          if (dropout_ && pin > 0)
            da = dropout_keep(inner_key_, id * F + f, pin) ? da * dropout_scale(pin) : 0.0;
          const auto ha = static_cast<float>(h_[id * F1 + f]);
          if (c_.experts.glu) {  // a = act(h_act) * h_lin
            dh[F + f] = da * activate(act, ha);
            da *= h_[id * F1 + F + f];
          }
          dh[f] = da * activate_grad(act, ha);
        }
        for (int64_t j = 0; j < F1 && db1_.numel(); ++j)
          db1_[e * F1 + j] += static_cast<float>(dh[j]);
        for (int64_t h = 0; h < H; ++h) {
          double acc = 0;
          for (int64_t j = 0; j < F1; ++j) {
            acc += dh[j] * w1_[(e * H + h) * F1 + j];
            dw1_[(e * H + h) * F1 + j] += static_cast<float>(expert_in_[id * H + h] * dh[j]);
          }
          din[id * H + h] = acc;
        }
      }
  // dx[g,t,h] = sum_{e,c} dispatch[g,t,e,c] din[g,e,c,h]
  std::vector<double> dxd(N * H, 0.0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t h = 0; h < H; ++h)
            dxd[(g * T + t) * H + h] +=
                D[arg(g, t, e, c, T, E, C)] * din[((g * E + e) * C + c) * H + h];
  // The router, the softmax (the masked probabilities) and the z-loss (the real logits).
  std::vector<double> dprobs;
  route_backward(dcombine, loss_scale, dprobs);
  const double zs = c_.router.router_z_loss_weight * loss_scale * 2.0 / static_cast<double>(N);
  std::vector<double> dlogits(N * E);
  for (int64_t n = 0; n < N; ++n) {
    double dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += dprobs[n * E + e] * probs_[n * E + e];
    for (int64_t e = 0; e < E; ++e)
      dlogits[n * E + e] = probs_[n * E + e] * (dprobs[n * E + e] - dot) +
                           zs * lse_[n] * std::exp(logits_[n * E + e] - lse_[n]);
  }
  // The gate.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) {
      if (dbias_.numel()) dbias_[e] += static_cast<float>(dlogits[n * E + e]);
      for (int64_t h = 0; h < H; ++h)
        dkernel_[h * E + e] += static_cast<float>(gate_in_[n * H + h] * dlogits[n * E + e]);
    }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      const float z = noise(n * H + h);
      for (int64_t e = 0; e < E; ++e) dxd[n * H + h] += dlogits[n * E + e] * kernel_[h * E + e] * z;
    }
  dx.resize(dy.shape());
  for (int64_t i = 0; i < N * H; ++i) dx[i] = static_cast<float>(dxd[i]);
}

}  // namespace sparsemoe
