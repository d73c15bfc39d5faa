// MoeLayer forward/backward on the sparse path or the masked-einsum reference (see moe_layer.h).
#include "sparsemoe/layers/moe_layer.h"

#include <cstring>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/routing/capacity.h"

namespace sparsemoe {

namespace {
constexpr uint64_t kRouterTag = 0x524f5554, kExpertsTag = 0x45585054, kJitterTag = 0x4a495454;
constexpr uint64_t kBackboneTag = 0x4241434b;
}  // namespace

nlohmann::json MoeLayerConfig::to_json() const {
  return {{"name", name},
          {"hidden_size", hidden_size},
          {"experts", experts.to_json()},
          {"router", router.to_json()},
          {"train_capacity_factor", train_capacity_factor},
          {"eval_capacity_factor", eval_capacity_factor},
          {"examples_per_group", examples_per_group},
          {"min_expert_capacity", min_expert_capacity},
          {"dropless", dropless},
          {"expert_capacity_dim", expert_capacity_dim},
          {"seed", seed}};
}

MoeLayerConfig MoeLayerConfig::from_json(const nlohmann::json& j) {
  MoeLayerConfig c;
  JsonFields f(j, "MoeLayerConfig");
  f.read("name", c.name);
  f.read("hidden_size", c.hidden_size);
  if (auto* e = f.object("experts")) c.experts = FeedForwardExpertsConfig::from_json(*e);
  if (auto* r = f.object("router")) c.router = RouterConfig::from_json(*r);
  f.read("train_capacity_factor", c.train_capacity_factor);
  f.read("eval_capacity_factor", c.eval_capacity_factor);
  f.read("examples_per_group", c.examples_per_group);
  f.read("min_expert_capacity", c.min_expert_capacity);
  f.read("dropless", c.dropless);
  f.read("expert_capacity_dim", c.expert_capacity_dim);
  f.read("seed", c.seed);
  f.finish();
  c.validate();
  return c;
}

void MoeLayerConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("MoeLayerConfig: " + m); };
  if (hidden_size < 1) bad("hidden_size: expected >= 1, got " + std::to_string(hidden_size));
  experts.validate("MoeLayerConfig.experts");
  router.validate();
  if (experts.num_experts != router.num_experts)
    bad("experts.num_experts (" + std::to_string(experts.num_experts) +
        ") must equal router.num_experts (" + std::to_string(router.num_experts) + ")");
  if (!(train_capacity_factor >= 0)) bad("train_capacity_factor: expected >= 0");
  if (!(eval_capacity_factor >= 0)) bad("eval_capacity_factor: expected >= 0");
  if (!(examples_per_group > 0)) bad("examples_per_group: expected > 0");
  if (min_expert_capacity < 0) bad("min_expert_capacity: expected >= 0");
  if (expert_capacity_dim < 0) bad("expert_capacity_dim: expected >= 0");
  if (dropless && router.type != RouterType::kTokensChoose)
    bad("dropless: defined for router.type 'tokens_choose' only (experts_choose always fills "
        "exactly C slots per expert)");
}

nlohmann::json MoeMetrics::to_json() const {
  return {{"load_balancing_loss", load_balancing_loss},
          {"router_z_loss", router_z_loss},
          {"unscaled_router_z_loss", unscaled_router_z_loss},
          {"fraction_tokens_left_behind", fraction_tokens_left_behind},
          {"router_confidence", router_confidence},
          {"expert_usage", expert_usage},
          {"tokens_per_expert", tokens_per_expert},
          {"over_capacity_1_ratio", over_capacity_1_ratio},
          {"over_capacity_2_ratio", over_capacity_2_ratio}};
}

MoeLayer::MoeLayer(const MoeLayerConfig& config)
    : config_((config.validate(), config)),
      router_(config.router, config.hidden_size, derive_key(config.seed, kRouterTag)),
      experts_(config.experts, config.hidden_size, derive_key(config.seed, kExpertsTag)) {}

Shape MoeLayer::output_shape(const Shape& s) const {
  check_arg(s.size() == 3 && s[2] == config_.hidden_size,
            "MoeLayer input: expected shape [B, L, H=" + std::to_string(config_.hidden_size) +
                "], got " + shape_str(s));
  return s;
}

std::vector<ParamRef> MoeLayer::params() {
  std::vector<ParamRef> p = {
      {"router/router_weights/kernel", &router_.kernel, &router_.kernel_grad}};
  if (router_.bias.numel())
    p.push_back({"router/router_weights/bias", &router_.bias, &router_.bias_grad});
  for (auto& r : prefixed("experts", experts_.params())) p.push_back(r);
  return p;
}

MoeMetrics MoeLayer::forward(const Tensor& x, Tensor& y, const ForwardOptions& opt) {
  output_shape(x.shape());
  const int64_t B = x.dim(0), L = x.dim(1), E = config_.router.num_experts;
  const Grouping grp = compute_grouping(B, L, config_.examples_per_group);
  const bool top2 = config_.router.type == RouterType::kTop2;
  // lingvo's local_dispatch=false gates all groups as one.
  const bool merge = top2 && !config_.router.local_dispatch;
  const int64_t G = merge ? 1 : grp.num_groups, T = merge ? B * L : grp.tokens_per_group;
  const double cf = opt.training ? config_.train_capacity_factor : config_.eval_capacity_factor;
  const int64_t C = top2 ? lingvo_expert_capacity(config_.expert_capacity_dim, cf, T, E)
                    : config_.dropless ? -1
                                       : expert_capacity(cf, T, E, config_.min_expert_capacity);
  if (opt.paddings) check_shape("paddings", opt.paddings->shape(), {B, L}, "[B, L]");
  if (config_.router.type == RouterType::kExpertsChoose)
    check_arg(C <= T, "experts_choose: expert capacity C=" + std::to_string(C) +
                          " exceeds tokens_per_group T=" + std::to_string(T) +
                          " (lower the capacity factor or min_expert_capacity)");
  x_ = &x;
  x_shape_ = x.shape();

  const RouterLosses losses = router_.forward(x.data(), G, T, C, opt.training,
                                              derive_key(config_.seed, kJitterTag, opt.step),
                                              opt.paddings ? opt.paddings->data() : nullptr);
  const RoutingPlan& plan = router_.plan();
  y.resize(x.shape());

  if (path_ == MoePath::kMaskedEinsum) {
    ref_drop_ = experts_.dropout(opt, nullptr);  // the sparse path's streams, dense slot ids
    moe_reference_forward(experts_.weights().params(), plan, x.data(), y.data(), ref_drop_, ref_);
  } else {
    apply_.forward(plan, experts_, x.data(), y.data(), opt);
  }

  const RoutingStats st = routing_stats(plan);
  MoeMetrics m;
  m.load_balancing_loss = losses.load_balancing_loss;
  m.router_z_loss = losses.router_z_loss;
  m.unscaled_router_z_loss = losses.unscaled_router_z_loss;
  m.fraction_tokens_left_behind = st.fraction_tokens_left_behind;
  m.router_confidence = st.router_confidence;
  m.expert_usage = st.expert_usage;
  m.tokens_per_expert = st.tokens_per_expert;
  m.over_capacity_1_ratio = losses.over_capacity_1_ratio;
  m.over_capacity_2_ratio = losses.over_capacity_2_ratio;
  const double lb_w = config_.router.type != RouterType::kExpertsChoose
                          ? config_.router.load_balancing_loss_weight
                          : 0;
  m.loss = lb_w * m.load_balancing_loss + m.router_z_loss;
  m.num_groups = G, m.tokens_per_group = T, m.expert_capacity = plan.C;
  return m;
}

void MoeLayer::backward(const Tensor& dy, Tensor& dx) {
  check_arg(x_ != nullptr, "MoeLayer::backward: call forward first");
  check_shape("dy", dy.shape(), x_shape_, "[B, L, H]");
  const RoutingPlan& plan = router_.plan();
  const int64_t E = plan.E, N = plan.G * plan.T;
  dx.resize(dy.shape());
  dprobs_.resize({N, E});
  if (path_ == MoePath::kMaskedEinsum) {
    moe_reference_backward(experts_.weights().params(), plan, dy.data(), dx.data(), dprobs_.data(),
                           ref_drop_, ref_, experts_.weights().grads());
  } else {
    apply_.backward(plan, experts_, dy.data(), dx.data(), dprobs_.data());
  }
  router_.backward(dprobs_.data(), dx.data());
}

nlohmann::json MoeLayerWithBackboneConfig::to_json() const {
  return {{"moe", moe.to_json()}, {"backbone", backbone.to_json()}};
}

MoeLayerWithBackboneConfig MoeLayerWithBackboneConfig::from_json(const nlohmann::json& j) {
  MoeLayerWithBackboneConfig c;
  JsonFields f(j, "MoeLayerWithBackboneConfig");
  if (auto* m = f.object("moe")) c.moe = MoeLayerConfig::from_json(*m);
  if (auto* b = f.object("backbone")) c.backbone = FeedForwardConfig::from_json(*b);
  f.finish();
  return c;
}

MoeLayerWithBackbone::MoeLayerWithBackbone(const MoeLayerWithBackboneConfig& config)
    : config_(config),
      moe_(config.moe),
      backbone_(config.backbone, config.moe.hidden_size,
                derive_key(config.moe.seed, kBackboneTag)) {}

std::vector<ParamRef> MoeLayerWithBackbone::params() {
  auto p = prefixed("moe", moe_.params());
  for (auto& r : prefixed("backbone", backbone_.params())) p.push_back(r);
  return p;
}

MoeMetrics MoeLayerWithBackbone::forward(const Tensor& x, Tensor& y, const ForwardOptions& opt) {
  MoeMetrics m = moe_.forward(x, y, opt);
  backbone_.forward(x, tmp_, opt);
  for (int64_t i = 0; i < y.numel(); ++i) y[i] += tmp_[i];
  return m;
}

void MoeLayerWithBackbone::backward(const Tensor& dy, Tensor& dx) {
  moe_.backward(dy, dx);
  backbone_.backward(dy, tmp_);
  for (int64_t i = 0; i < dx.numel(); ++i) dx[i] += tmp_[i];
}

}  // namespace sparsemoe
