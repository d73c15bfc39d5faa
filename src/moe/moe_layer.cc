// MoeLayer: the stages forward (group, gate, route, dispatch, experts, combine) and backward in
// reverse, over the activation record (see moe_layer.h and docs/architecture.md).
#include "sparsemoe/moe/moe_layer.h"

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/moe/streams.h"

namespace sparsemoe {

using namespace moe_streams;

MoeLayerConfig MoeLayerConfig::from_json(const nlohmann::json& j) {
  MoeLayerConfig c;
  config_read(j, "MoeLayerConfig", c);
  c.validate();
  return c;
}

void MoeLayerConfig::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("MoeLayerConfig: " + m); };
  check_fields(*this, "MoeLayerConfig");
  router.validate();
  if (experts.num_experts != router.num_experts)
    bad("experts.num_experts (" + std::to_string(experts.num_experts) +
        ") must equal router.num_experts (" + std::to_string(router.num_experts) + ")");
  if (dropless) {  // the policy's capacity rule says whether it can route without a limit
    try {
      make_policy(router)->capacity(capacity_rule(true), 1, router.num_experts);
    } catch (const InvalidArgument& e) {
      bad(std::string("dropless: ") + e.what());
    }
  }
}

CapacityRule MoeLayerConfig::capacity_rule(bool training) const {
  return {training ? train_capacity_factor : eval_capacity_factor, min_expert_capacity, dropless,
          expert_capacity_dim};
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

namespace {
ExpertShard placed(const MoeLayerConfig& c, ExpertPlacement p) {
  check_arg(p.size >= 1 && p.rank >= 0 && p.rank < p.size,
            "ExpertPlacement: rank " + std::to_string(p.rank) + " of " + std::to_string(p.size) +
                " processes");
  return p.size > 1 ? expert_shard(c.experts.num_experts, p.rank, p.size) : ExpertShard{0, -1};
}
}  // namespace

MoeLayer::MoeLayer(const MoeLayerConfig& config, ExpertPlacement placement)
    : config_((config.validate(), config)),
      policy_(make_policy(config.router)),
      gate_(config.hidden_size, config.router.num_experts, config.router.use_bias,
            config.router.kernel_init_stddev,
            derive_key(derive_key(config.seed, kRouterTag), kGateInitTag)),
      experts_(config.experts, config.hidden_size, derive_key(config.seed, kExpertsTag),
               placed(config, placement).first, placed(config, placement).count) {}

Shape MoeLayer::output_shape(const Shape& s) const {
  check_arg(s.size() == 3 && s[2] == config_.hidden_size,
            "MoeLayer input: expected shape [B, L, H=" + std::to_string(config_.hidden_size) +
                "], got " + shape_str(s));
  return s;
}

void MoeLayer::set_communicator(Communicator* comm, bool shard_storage) {
  FfnWeights& w = experts_.weights();
  if (comm && comm->size() > 1 && (shard_storage || w.sharded)) {
    const ExpertShard s = expert_shard(w.E, comm->rank(), comm->size());
    if (s.first != w.expert0 || s.count != w.held) w.keep_experts(s.first, s.count);
  }
  comm_ = comm;
}

std::vector<ParamRef> MoeLayer::params() {
  std::vector<ParamRef> p = {{"router/router_weights/kernel", &gate_.kernel, &gate_.kernel_grad}};
  if (gate_.bias.numel())
    p.push_back({"router/router_weights/bias", &gate_.bias, &gate_.bias_grad});
  for (auto& r : prefixed("experts", experts_.params())) p.push_back(r);
  return p;
}

MoeMetrics MoeLayer::forward(const Tensor& x, Tensor& y, const ForwardOptions& opt) {
  output_shape(x.shape());
  const int64_t B = x.dim(0), L = x.dim(1), H = config_.hidden_size;
  const int64_t E = config_.router.num_experts;
  // Group: [B, L, H] -> [G, T, H]; lingvo's local_dispatch=false gates all groups as one.
  const Grouping grp = compute_grouping(B, L, config_.examples_per_group);
  const bool merge = !config_.router.local_dispatch;
  const int64_t G = merge ? 1 : grp.num_groups, T = merge ? B * L : grp.tokens_per_group;
  const int64_t C = policy_->capacity(config_.capacity_rule(opt.training), T, E);
  if (opt.paddings) check_shape("paddings", opt.paddings->shape(), {B, L}, "[B, L]");
  // Part of a global batch split over processes by whole groups (ForwardOptions).
  const int64_t global_tokens = opt.global_tokens > 0 ? opt.global_tokens : B * L;
  check_arg(opt.token_offset >= 0 && opt.token_offset % T == 0 && global_tokens % T == 0 &&
                opt.token_offset + B * L <= global_tokens,
            "MoeLayer: a process's share of the batch must be whole routing groups of T=" +
                std::to_string(T) + " tokens within the global batch; got tokens [" +
                std::to_string(opt.token_offset) + ", " + std::to_string(opt.token_offset + B * L) +
                ") of " + std::to_string(global_tokens));
  check_arg(
      !merge || global_tokens == B * L,
      "MoeLayer: router.local_dispatch=false gates the whole batch as one group, which cannot "
      "be split over processes");
  // Expert parallelism: every call on every rank is one data-parallel unit of the step, whose
  // owned experts' gradients are kept apart until the step's units are all in (dispatch.h).
  const bool parallel = comm_ && comm_->size() > 1;
  const bool replicated = parallel && opt.replicated;
  int64_t unit = 0;
  if (parallel && !replicated) {
    const int P = comm_->size();
    check_arg(opt.units >= P && opt.units % P == 0 && B * L * opt.units == global_tokens &&
                  opt.token_offset % (B * L) == 0,
              "MoeLayer: with experts over " + std::to_string(P) +
                  " processes, each call must be one of the step's units (ForwardOptions::units, "
                  "a multiple of the processes): units=" +
                  std::to_string(opt.units) + " of a batch of " + std::to_string(global_tokens) +
                  " tokens, this call tokens [" + std::to_string(opt.token_offset) + ", " +
                  std::to_string(opt.token_offset + B * L) + ")");
    unit = opt.token_offset / (B * L);
  }
  act_.x_shape = x.shape();
  act_.G = G, act_.T = T;

  // Gate, then the routing policy.
  const uint64_t key = derive_key(config_.seed, kJitterTag, opt.step);
  act_.noise = {opt.training && config_.router.jitter_noise > 0, key,
                static_cast<float>(config_.router.jitter_noise), opt.token_offset * H};
  gate_forward(gate_, x.data(), B * L, H, act_.noise, act_.gate_in, act_.routing.logits,
               opt.save_for_backward);
  act_.routed = route_logits(*policy_, config_.router, act_.routing.logits.data(), G, T, C,
                             opt.paddings ? opt.paddings->data() : nullptr, opt.training,
                             derive_key(key, kTop2Stream), act_.routing, opt.token_offset / T,
                             global_tokens / T);
  const RoutingPlan& plan = act_.routing.plan;

  // Dispatch -> experts -> combine.
  y.resize(x.shape());
  if (replicated)
    experts_forward_replicated(plan, experts_, x.data(), y.data(), opt, act_.experts, *comm_);
  else
    experts_forward(plan, experts_, x.data(), y.data(), opt, act_.experts, comm_, unit,
                    parallel ? opt.units : 1);

  MoeMetrics m{act_.routed};
  m.num_groups = G, m.tokens_per_group = T, m.expert_capacity = plan.C;
  if (!opt.save_for_backward) act_.x_shape.clear();  // the experts kept no pre-activations
  return m;
}

void MoeLayer::backward(const Tensor& dy, Tensor& dx, double loss_scale, GradMode mode) {
  experts_.weights().release_inference();  // an optimizer step follows
  check_arg(!act_.x_shape.empty(),
            "MoeLayer::backward: call forward first (with ForwardOptions::save_for_backward)");
  check_shape("dy", dy.shape(), act_.x_shape, "[B, L, H]");
  const RoutingPlan& plan = act_.routing.plan;
  const int64_t E = plan.E, N = plan.G * plan.T;
  dx.resize(dy.shape());
  // Combine -> experts -> dispatch backward: dx from the experts, a gradient per plan row.
  experts_backward(plan, experts_, dy.data(), dx.data(), act_.experts, comm_, mode);
  if (mode == GradMode::kOverwrite) {  // the router's gradients are small: zeroed, then added
    gate_.kernel_grad.zero();
    gate_.bias_grad.zero();
  }
  // Routing policy -> softmax and z-loss -> gate.
  act_.dlogits.resize({N, E});
  route_logits_backward(*policy_, config_.router, act_.routing, act_.experts.dweight.data(),
                        loss_scale, act_.dlogits.data());
  gate_backward(gate_, act_.gate_in, act_.dlogits.data(), act_.noise, act_.dgate_in, dx.data());
}

MoeLayerWithBackboneConfig MoeLayerWithBackboneConfig::from_json(const nlohmann::json& j) {
  MoeLayerWithBackboneConfig c;
  config_read(j, "MoeLayerWithBackboneConfig", c);
  c.moe.validate();
  c.backbone.validate("MoeLayerWithBackboneConfig.backbone");
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

void MoeLayerWithBackbone::backward(const Tensor& dy, Tensor& dx, double loss_scale,
                                    GradMode mode) {
  moe_.backward(dy, dx, loss_scale, mode);
  backbone_.backward(dy, tmp_, mode);
  for (int64_t i = 0; i < dx.numel(); ++i) dx[i] += tmp_[i];
}

}  // namespace sparsemoe
