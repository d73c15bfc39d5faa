// Commands that use a trained run directory: `eval` (accuracy, loss and a confusion summary on a
// split), `predict` (text lines on stdin -> label and top probabilities), `inspect` (config,
// parameter counts, per-layer expert load on a sample batch) and `report` (rebuild report.html).
#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/train/report.h"
#include "sparsemoe/train/trainer.h"

namespace sparsemoe::cli {

namespace {

using nlohmann::json;

struct RunArgs {
  std::string run_dir, split = "test";
  bool json = false;
  int top = 3;
};

int run_eval(const RunArgs& a) {
  const Split split = parse_split(a.split, "--split");
  LoadedRun run = load_run(a.run_dir);
  const TaskData d =
      prepare_task_data(run.config.data, load_corpus(run.config.data), run.tokenizer);
  const TokenizedSet& set = d.classify[static_cast<int>(split)];
  const EvalResult r = evaluate_classifier(*run.model, set, run.config.batch_size);
  int64_t majority = 0;
  for (int64_t l : set.labels) majority += l == d.majority_label;
  const double majority_acc = set.size() ? majority / static_cast<double>(set.size()) : 0;
  const int64_t C = static_cast<int64_t>(run.labels.size());
  // The most frequent confusions (true != predicted).
  std::vector<std::tuple<int64_t, int64_t, int64_t>> pairs;  // (count, true, predicted)
  for (int64_t t = 0; t < C; ++t)
    for (int64_t p = 0; p < C; ++p)
      if (t != p && r.confusion[t * C + p] > 0) pairs.emplace_back(r.confusion[t * C + p], t, p);
  std::sort(pairs.begin(), pairs.end(), std::greater<>());
  if (pairs.size() > 5) pairs.resize(5);
  if (a.json) {
    json j = {{"split", a.split},
              {"step", run.step},
              {"accuracy", r.accuracy},
              {"loss", r.loss},
              {"examples", r.count},
              {"majority_class", run.labels[d.majority_label]},
              {"majority_accuracy", majority_acc},
              {"labels", run.labels},
              {"confusion", json::array()}};
    for (int64_t t = 0; t < C; ++t)
      j["confusion"].push_back(
          std::vector<int64_t>(r.confusion.begin() + t * C, r.confusion.begin() + (t + 1) * C));
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("{} split of {} ({} examples), checkpoint at step {}\n", a.split,
                           d.corpus_name, r.count, run.step);
  std::cout << fmt::format("accuracy {:.4f}  loss {:.4f}  (majority class '{}': {:.4f})\n",
                           r.accuracy, r.loss, run.labels[d.majority_label], majority_acc);
  std::cout << "most frequent confusions (true -> predicted):\n";
  for (const auto& [n, t, p] : pairs)
    std::cout << fmt::format("  {:>6}  {} -> {}\n", n, run.labels[t], run.labels[p]);
  return 0;
}

int run_predict(const RunArgs& a) {
  check_arg(a.top >= 1, "--top: expected >= 1, got " + std::to_string(a.top));
  LoadedRun run = load_run(a.run_dir);
  const int64_t C = static_cast<int64_t>(run.labels.size()), k = std::min<int64_t>(a.top, C);
  // Streamed in chunks of whole batches, so the output is the same as for all lines at once and
  // the memory does not grow with the input.
  const int64_t B = run.config.batch_size;
  const size_t chunk = static_cast<size_t>(B * std::max<int64_t>(1, 256 / B));
  std::vector<std::string> lines;
  std::vector<std::vector<int>> rows;
  auto flush = [&] {
    const auto probs = predict_probabilities(*run.model, rows, B);
    for (size_t i = 0; i < lines.size(); ++i) {
      std::vector<int64_t> order(C);
      for (int64_t c = 0; c < C; ++c) order[c] = c;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t x, int64_t y) { return probs[i][x] > probs[i][y]; });
      if (a.json) {
        json top = json::array();
        for (int64_t j = 0; j < k; ++j)
          top.push_back({{"label", run.labels[order[j]]}, {"probability", probs[i][order[j]]}});
        // Invalid UTF-8 in a line is echoed with U+FFFD, not an error that loses the rest.
        std::cout << json({{"text", lines[i]}, {"label", run.labels[order[0]]}, {"top", top}})
                         .dump(-1, ' ', false, json::error_handler_t::replace)
                  << "\n";
      } else {
        std::string alts;
        for (int64_t j = 0; j < k; ++j)
          alts +=
              fmt::format("{}{} {:.3f}", j ? ", " : "", run.labels[order[j]], probs[i][order[j]]);
        std::cout << run.labels[order[0]] << "\t" << alts << "\n";
      }
    }
    std::cout.flush();
    lines.clear();
    rows.clear();
  };
  for (std::string line; std::getline(std::cin, line);) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    rows.push_back(run.tokenizer.encode(
        std::string(predict_prefix(line, run.config.model.max_sequence_length))));
    lines.push_back(std::move(line));
    if (lines.size() == chunk) flush();
  }
  if (!lines.empty()) flush();
  return 0;
}

int run_inspect(const RunArgs& a) {
  LoadedRun run = load_run(a.run_dir);
  TaskModel& m = *run.model;
  const SparseMixerConfig& c = run.config.model;
  int64_t embeddings = 0, moe = 0, expert_params = 0, other = 0, heads = 0;
  for (const ParamRef& p : m.all_params()) {
    const int64_t n = p.value->numel();
    if (p.name.rfind("model/", 0) != 0) {
      heads += n;
    } else if (p.name.find("embedding") != std::string::npos) {  // word, position, type, norm
      embeddings += n;
    } else if (p.name.find("/experts/") != std::string::npos) {
      expert_params += n;
      moe += n;
    } else if (p.name.find("/router/") != std::string::npos) {
      moe += n;
    } else {
      other += n;
    }
  }
  const int64_t E = c.moe.experts.num_experts;
  const int64_t k = c.moe.router.num_selected_experts;  // per token (experts-choose: 1 on average)
  const int64_t active = embeddings + other + (moe - expert_params) + expert_params / E * k;
  // Expert load on a sample: the first batch of the dev split.
  const TaskData d =
      prepare_task_data(run.config.data, load_corpus(run.config.data), run.tokenizer);
  TokenizedSet sample;
  const TokenizedSet& dev = d.classify[1];
  const int64_t n = std::min<int64_t>(run.config.batch_size, dev.size());
  sample.tokens.assign(dev.tokens.begin(), dev.tokens.begin() + n);
  sample.labels.assign(dev.labels.begin(), dev.labels.begin() + n);
  const EvalResult r = evaluate_classifier(m, sample, run.config.batch_size);
  json j = {{"run", a.run_dir},
            {"step", run.step},
            {"model", c.to_json()},
            {"parameters",
             {{"total", embeddings + moe + other + heads},
              {"embeddings", embeddings},
              {"moe_layers", moe},
              {"other_encoder", other},
              {"heads", heads},
              {"active_per_token", active}}},
            {"labels", run.labels.size()},
            {"sample_batch", {{"examples", n}, {"moe", r.moe.to_json()}}}};
  if (a.json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format(
      "run {} at step {}\nmodel: {} layers, H {}, L {}, vocab {}, {} mixing, MoE layers {} "
      "({} experts, {} router), attention layers {}\n",
      a.run_dir, run.step, c.num_layers, c.hidden_size, c.max_sequence_length, c.vocab_size,
      json(c.to_json())["mixing_mechanism"].get<std::string>(), json(c.moe_layers).dump(), E,
      router_type_name(c.moe.router.type), json(c.attention_layers).dump());
  std::cout << fmt::format(
      "parameters: {} total = embeddings {} + MoE layers {} + other encoder {} + heads {}; "
      "{} active per token (k experts of each MoE layer; experts-choose: 1 on average)\n",
      embeddings + moe + other + heads, embeddings, moe, other, heads, active);
  std::cout << fmt::format("expert load on a sample batch ({} dev examples):\n", n);
  for (size_t l = 0; l < r.moe.per_layer.size(); ++l) {
    const MoeMetrics& mm = r.moe.per_layer[l];
    std::cout << fmt::format("  layer {}: tokens per expert {}  left behind {:.3f}  usage {:.3f}\n",
                             r.moe.moe_layer_index[l], json(mm.tokens_per_expert).dump(),
                             mm.fraction_tokens_left_behind, mm.expert_usage);
  }
  return 0;
}

CLI::App* add_run_subcommand(CLI::App& app, const char* name, const char* help,
                             const std::shared_ptr<RunArgs>& a) {
  CLI::App* cmd = app.add_subcommand(name, help);
  cmd->add_option("run_dir", a->run_dir, "run directory written by `sparsemoe train`")->required();
  return cmd;
}

}  // namespace

void add_run_commands(CLI::App& app, std::function<int()>& run) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* eval = add_run_subcommand(app, "eval", "Accuracy, loss and confusions of a run", a);
  eval->add_option("--split", a->split, "train, dev or test (default test)");
  eval->add_flag("--json", a->json, "machine-readable output");
  eval->callback([a, &run] { run = [a] { return run_eval(*a); }; });
  CLI::App* predict =
      add_run_subcommand(app, "predict", "Label text lines from stdin with a trained run", a);
  predict->add_option("--top", a->top, "probabilities shown per line (default 3)");
  predict->add_flag("--json", a->json, "one JSON object per line");
  predict->callback([a, &run] { run = [a] { return run_predict(*a); }; });
  CLI::App* inspect =
      add_run_subcommand(app, "inspect", "Config, parameter counts and expert load of a run", a);
  inspect->add_flag("--json", a->json, "machine-readable output");
  inspect->callback([a, &run] { run = [a] { return run_inspect(*a); }; });
  CLI::App* report = add_run_subcommand(app, "report", "Rebuild a run's report.html", a);
  report->callback([a, &run] {
    run = [a] {
      std::cout << write_report(a->run_dir) << "\n";
      return 0;
    };
  });
}

}  // namespace sparsemoe::cli
