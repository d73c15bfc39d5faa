// `sparsemoe route [FILE]`: reads a JSON routing problem (router logits and options), prints the
// routing decision as JSON: capacity, dense dispatch/combine [G,T,E,C], losses and metrics.
#include <cmath>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/kernels.h"
#include "sparsemoe/routing/capacity.h"
#include "sparsemoe/routing/routers.h"
#include "sparsemoe/routing/top2_gating.h"

namespace sparsemoe::cli {

namespace {

using nlohmann::json;

// Reads paddings G x T of 0/1.
std::vector<float> read_paddings(const json& j, int64_t G, int64_t T) {
  auto fail = [&](const std::string& m) {
    throw InvalidArgument("paddings: " + m + " (expected a G=" + std::to_string(G) +
                          " x T=" + std::to_string(T) + " nested array of 0/1)");
  };
  if (!j.is_array() || static_cast<int64_t>(j.size()) != G) fail("wrong number of groups");
  std::vector<float> out;
  for (const json& row : j) {
    if (!row.is_array() || static_cast<int64_t>(row.size()) != T) fail("wrong number of tokens");
    for (const json& v : row) {
      if (!v.is_number() || (v.get<double>() != 0 && v.get<double>() != 1)) fail("not 0 or 1");
      out.push_back(v.get<float>());
    }
  }
  return out;
}

// Reads logits G x T x E, checking that the nested arrays are rectangular, non-empty, finite.
std::vector<float> read_logits(const json& j, int64_t& G, int64_t& T, int64_t& E) {
  auto fail = [](const std::string& m) { throw InvalidArgument("logits: " + m); };
  if (!j.is_array() || j.empty()) fail("expected a non-empty G x T x E nested array");
  G = static_cast<int64_t>(j.size());
  T = E = -1;
  std::vector<float> out;
  for (size_t g = 0; g < j.size(); ++g) {
    const json& grp = j[g];
    if (!grp.is_array() || grp.empty())
      fail("logits[" + std::to_string(g) + "] must be a non-empty array of tokens");
    if (T < 0) T = static_cast<int64_t>(grp.size());
    if (static_cast<int64_t>(grp.size()) != T)
      fail("ragged: logits[" + std::to_string(g) + "] has " + std::to_string(grp.size()) +
           " tokens, expected " + std::to_string(T));
    for (size_t t = 0; t < grp.size(); ++t) {
      const json& row = grp[t];
      const std::string at = "logits[" + std::to_string(g) + "][" + std::to_string(t) + "]";
      if (!row.is_array() || row.empty()) fail(at + " must be a non-empty array of expert logits");
      if (E < 0) E = static_cast<int64_t>(row.size());
      if (static_cast<int64_t>(row.size()) != E)
        fail("ragged: " + at + " has " + std::to_string(row.size()) + " experts, expected " +
             std::to_string(E));
      for (const json& v : row) {
        if (!v.is_number()) fail(at + " holds a non-number");
        const double d = v.get<double>();
        if (!std::isfinite(d) || !std::isfinite(static_cast<float>(d)))
          fail(at + " holds a non-finite value");
        out.push_back(static_cast<float>(d));
      }
    }
  }
  return out;
}

json nested(const std::vector<float>& v, int64_t G, int64_t T, int64_t E, int64_t C, bool ints) {
  json out = json::array();
  for (int64_t g = 0; g < G; ++g) {
    json jg = json::array();
    for (int64_t t = 0; t < T; ++t) {
      json jt = json::array();
      for (int64_t e = 0; e < E; ++e) {
        json je = json::array();
        for (int64_t c = 0; c < C; ++c) {
          const float x = v[((g * T + t) * E + e) * C + c];
          if (ints)
            je.push_back(static_cast<int>(x));
          else
            je.push_back(x);
        }
        jt.push_back(je);
      }
      jg.push_back(jt);
    }
    out.push_back(jg);
  }
  return out;
}

int run_route(const std::string& file) {
  std::string text;
  if (file.empty() || file == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    std::ifstream in(file);
    if (!in) throw InvalidArgument("cannot open '" + file + "'");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  json req;
  try {
    req = json::parse(text);
  } catch (const json::exception& e) {
    throw InvalidArgument(std::string("invalid JSON: ") + e.what());
  }
  JsonFields f(req, "route request");
  std::string router;
  f.read("router", router);
  if (router != "experts_choose" && router != "tokens_choose" && router != "top2")
    throw InvalidArgument(
        "router: expected \"experts_choose\", \"tokens_choose\" or \"top2\", got \"" + router +
        "\"");
  const bool top2 = router == "top2";
  if (!req.contains("logits")) throw InvalidArgument("logits: missing");
  json jl;
  f.read("logits", jl);
  int64_t G, T, E;
  std::vector<float> logits = read_logits(jl, G, T, E);
  int64_t k = 1, C = -1;
  bool bpr = false;
  double cf = -1;
  f.read("k", k);
  f.read("batch_prioritized_routing", bpr);
  f.read("capacity", C);
  f.read("capacity_factor", cf);
  // top2 (lingvo Top2GatingOnLogits) options.
  Top2Options opt;
  std::string policy = "all";
  json jpad;
  uint64_t seed = 0;
  if (top2) {
    f.read("second_expert_policy", policy);
    f.read("second_expert_threshold", opt.second_expert_threshold);
    f.read("legacy_mtf_behavior", opt.legacy_mtf_behavior);
    f.read("expert_padding_idx", opt.expert_padding_idx);
    f.read("paddings", jpad);
    f.read("seed", seed);
  }
  f.finish();
  try {
    opt.second_expert_policy = parse_second_expert_policy(policy);
  } catch (const ConfigError& e) {
    throw InvalidArgument(e.what());
  }
  if (!(opt.second_expert_threshold >= 0))
    throw InvalidArgument("second_expert_threshold: expected >= 0");
  for (int64_t e : opt.expert_padding_idx)
    if (e < 0 || e >= E)
      throw InvalidArgument("expert_padding_idx: expected entries in [0, E=" + std::to_string(E) +
                            "), got " + std::to_string(e));
  if (req.contains("capacity") && req.contains("capacity_factor"))
    throw InvalidArgument("give either capacity or capacity_factor, not both");
  if (req.contains("capacity_factor")) {
    if (!(cf >= 0) || !std::isfinite(cf))
      throw InvalidArgument("capacity_factor: expected a finite number >= 0");
    C = top2 ? lingvo_expert_capacity(0, cf, T, E) : expert_capacity(cf, T, E);
  } else if (!req.contains("capacity")) {  // the seed's default capacity factor, 1
    C = top2 ? lingvo_expert_capacity(0, 1.0, T, E) : expert_capacity(1.0, T, E);
  }
  if (C < 0) throw InvalidArgument("capacity: expected >= 0, got " + std::to_string(C));
  if (top2) {
    if (req.contains("k") && k != 2) throw InvalidArgument("k: top2 always selects 2 experts");
  } else if (router == "experts_choose") {
    if (req.contains("k") && k != 1) throw InvalidArgument("k: applies to tokens_choose only");
    if (C > T)
      throw InvalidArgument("capacity: C=" + std::to_string(C) + " exceeds tokens per group T=" +
                            std::to_string(T) + " (experts_choose takes the top-C tokens)");
  } else if (k < 1 || k > E) {
    throw InvalidArgument("k: expected 1 <= k <= E=" + std::to_string(E) + ", got " +
                          std::to_string(k));
  }

  std::vector<float> probs;  // top2 softmaxes its own (expert-masked) logits
  if (!top2) {
    probs = logits;
    softmax_rows(probs.data(), G * T, E);
  }
  double z = 0;
  for (int64_t n = 0; n < G * T; ++n) {
    const double l = logsumexp(logits.data() + n * E, E);
    z += l * l;
  }
  z /= static_cast<double>(G * T);
  RoutingPlan plan;
  Top2State top2_state;
  if (top2) {
    std::vector<float> paddings;
    if (!jpad.is_null()) paddings = read_paddings(jpad, G, T);
    top2_gating_on_logits(logits.data(), paddings.empty() ? nullptr : paddings.data(), nullptr, G,
                          T, E, C, 0.0, opt, /*sample=*/true, seed, probs, plan, top2_state);
  } else if (router == "experts_choose") {
    route_experts_choose(probs.data(), G, T, E, C, plan);
  } else {
    route_tokens_choose(probs.data(), G, T, E, C, k, bpr, plan);
  }
  std::vector<float> dispatch(G * T * E * C), combine(G * T * E * C);
  plan.to_dense(dispatch.data(), combine.data());
  const RoutingStats st = routing_stats(plan);
  json out = {{"capacity", C},
              {"dispatch", nested(dispatch, G, T, E, C, true)},
              {"combine", nested(combine, G, T, E, C, false)},
              {"aux_loss", plan.aux_loss},
              {"router_z_loss", z},
              {"metrics",
               {{"load_balancing_loss", plan.aux_loss},
                {"router_z_loss", z},
                {"unscaled_router_z_loss", z},
                {"fraction_tokens_left_behind", st.fraction_tokens_left_behind},
                {"router_confidence", st.router_confidence},
                {"expert_usage", st.expert_usage},
                {"tokens_per_expert", st.tokens_per_expert}}}};
  if (top2) {
    out["metrics"]["over_capacity_1_ratio"] = top2_state.over_capacity_1_ratio;
    out["metrics"]["over_capacity_2_ratio"] = top2_state.over_capacity_2_ratio;
  }
  std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

void add_route_command(CLI::App& app, std::function<int()>& run) {
  auto* cmd = app.add_subcommand(
      "route", "Show the routing decision for given router logits (JSON in, JSON out)");
  auto file = std::make_shared<std::string>();
  cmd->add_option("file", *file, "JSON routing problem (default: standard input)");
  cmd->callback([&run, file] { run = [file] { return run_route(*file); }; });
}

}  // namespace sparsemoe::cli
