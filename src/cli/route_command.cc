// `sparsemoe route [FILE]`: reads a JSON routing problem (router logits and options), prints the
// routing decision as JSON: capacity, dense dispatch/combine [G,T,E,C], losses and metrics.
#include <cmath>
#include <filesystem>
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
#include "sparsemoe/core/limits.h"
#include "sparsemoe/moe/routing.h"

namespace sparsemoe::cli {

namespace {

using nlohmann::json;

// The most values each dense [G, T, E, C] array of an answer may hold: about 4 MB of JSON for the
// two; a larger answer is more than anyone reads, and a 65-byte request (capacity 2.8 million for
// one token) took the fuzzer's 10 s limit at 2^23.
constexpr int64_t kMaxRouteCells = int64_t{1} << 20;
// The largest request read (about 2 million logits).
constexpr size_t kMaxRequestBytes = size_t{64} << 20;

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

}  // namespace

std::string route_answer(const std::string& text) {
  json req;
  try {
    req = parse_json(text, "route request");
  } catch (const ConfigError& e) {
    throw InvalidArgument(e.what());
  }
  // The request names the library's options; everything is validated by the library.
  JsonFields f(req, "route request");
  std::string router;
  f.read("router", router);
  if (!req.contains("logits")) throw InvalidArgument("logits: missing");
  json jl;
  f.read("logits", jl);
  int64_t G, T, E;
  const std::vector<float> logits = read_logits(jl, G, T, E);
  RouterConfig rc;
  CapacityRule rule;
  int64_t C = -1;
  json jpad;
  uint64_t seed = 0;
  std::string policy = "all";
  try {
    rc.type = parse_router_type(router);
    rc.num_experts = E;
    rc.num_selected_experts = make_policy(rc)->default_k();
    f.read("k", rc.num_selected_experts);
    f.read("batch_prioritized_routing", rc.batch_prioritized_routing);
    f.read("capacity", C);
    f.read("capacity_factor", rule.capacity_factor);
    // lingvo Top2GatingOnLogits options (the other routers refuse them).
    f.read("second_expert_policy", policy);
    f.read("second_expert_threshold", rc.top2.second_expert_threshold);
    f.read("legacy_mtf_behavior", rc.top2.legacy_mtf_behavior);
    f.read("expert_padding_idx", rc.top2.expert_padding_idx);
    f.read("paddings", jpad);
    f.read("seed", seed);
    f.finish();
    rc.top2.second_expert_policy = kSecondExpertPolicies.parse(policy, "second_expert_policy");
    rc.validate();
  } catch (const ConfigError& e) {
    throw InvalidArgument(e.what());
  }
  if (req.contains("capacity") && req.contains("capacity_factor"))
    throw InvalidArgument("give either capacity or capacity_factor, not both");
  if (req.contains("capacity"))
    check_arg(C >= 0, "capacity: expected 0 to " + std::to_string(kMaxExpertCapacity) + ", got " +
                          std::to_string(C));
  std::vector<float> paddings;
  if (!jpad.is_null()) paddings = read_paddings(jpad, G, T);
  DenseRouteOptions o;
  o.capacity = req.contains("capacity") ? C : -1;
  o.capacity_factor = rule.capacity_factor;
  o.paddings = paddings.empty() ? nullptr : paddings.data();
  o.seeded = req.contains("seed");
  o.seed = seed;
  o.max_cells = kMaxRouteCells;
  const DenseRoute d = route_dense(rc, logits.data(), G, T, o);
  const RouteResult& r = d.result;
  json out = {{"capacity", d.C},
              {"dispatch", nested(d.dispatch, G, T, E, d.C, true)},
              {"combine", nested(d.combine, G, T, E, d.C, false)},
              {"aux_loss", r.load_balancing_loss},
              {"router_z_loss", r.unscaled_router_z_loss},
              {"metrics",
               {{"load_balancing_loss", r.load_balancing_loss},
                {"router_z_loss", r.unscaled_router_z_loss},
                {"unscaled_router_z_loss", r.unscaled_router_z_loss},
                {"fraction_tokens_left_behind", r.fraction_tokens_left_behind},
                {"router_confidence", r.router_confidence},
                {"expert_usage", r.expert_usage},
                {"tokens_per_expert", r.tokens_per_expert}}}};
  if (d.reports_over_capacity) {
    out["metrics"]["over_capacity_1_ratio"] = r.over_capacity_1_ratio;
    out["metrics"]["over_capacity_2_ratio"] = r.over_capacity_2_ratio;
  }
  return out.dump();
}

namespace {

int run_route(const std::string& file) {
  std::string text;
  std::istream* in = &std::cin;
  std::ifstream fin;
  if (!file.empty() && file != "-") {
    fin.open(file, std::ios::binary);
    if (!fin || std::filesystem::is_directory(file))
      throw InvalidArgument("cannot open '" + file + "' (expected a JSON file)");
    in = &fin;
  }
  char buf[1 << 16];
  while (in->read(buf, sizeof buf) || in->gcount() > 0) {
    text.append(buf, static_cast<size_t>(in->gcount()));
    if (text.size() > kMaxRequestBytes)
      throw InvalidArgument("route: the request is larger than " +
                            std::to_string(kMaxRequestBytes >> 20) + " MiB");
  }
  std::cout << route_answer(text) << "\n";
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
