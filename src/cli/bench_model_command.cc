// `sparsemoe bench model`: times whole networks from presets (or config files) on random token
// batches: inference (evaluation-mode forward to the pooled output) and a pretraining step
// (training-mode forward, masked-LM head on 15% of the positions and a 2-class head on the
// pooled output, both losses, full backward; the optimizer update is not included). Reports
// tokens/s for each and the speed of every preset relative to a baseline preset measured in the
// same run (the paper compares Sparse Mixer with BERT-Base). Next to each time: the GFLOP/s of
// the GEMM work the step did (counted by the GEMM primitives), its percentage of the machine's FMA
// peak (measured by ops/probe.h) and of the rate the BLAS library reaches with its own threading
// on the network's largest dense shape ([B*L, H] x [H, 4H]), and the instruction set that ran.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "commands.h"
#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/gemm.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/models/heads.h"
#include "sparsemoe/models/presets.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/ops/probe.h"
#include "sparsemoe/train/data_parallel.h"

namespace sparsemoe::cli {

namespace {

using nlohmann::json;

struct ModelBenchArgs {
  std::string presets = "sparse_mixer_base,fast_sparse_mixer,bert_base";
  std::string baseline = "bert_base";
  std::vector<std::string> sets;  // key=value overrides applied to every preset
  int64_t batch = 8;
  std::string mode = "both";  // train, infer or both
  int threads = 0;
  double min_time = 2.0;
  int min_runs = 3;
  bool json_out = false;
  bool no_pack = false;  // inference without weights packed beforehand
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

// A preset's network with its two pretraining heads and a random batch (keyed by `rank`, so
// that ranks hold different tokens), and one training step over them.
struct Rig {
  SparseMixerConfig c;
  std::unique_ptr<SparseMixer> net;
  std::unique_ptr<MaskedLmHead> mlm;
  std::unique_ptr<ClassificationHead> nsp;
  Tensor ids, mask, positions;
  std::vector<int64_t> mlm_labels, nsp_labels;
  std::vector<ParamRef> params;
  Tensor mlm_logits, nsp_logits, dmlm, dnsp, dseq, dpooled;
  int64_t B = 0, L = 0, H = 0;
  double loss = 0;

  Rig(const ModelBenchArgs& a, const std::string& name, int rank) {
    json j = load_model_config(name).to_json();
    for (const auto& kv : a.sets) apply_override(j, kv);
    c = SparseMixerConfig::from_json(j);
    net = std::make_unique<SparseMixer>(c);
    B = a.batch, L = c.max_sequence_length, H = c.hidden_size;
    const int64_t P = std::max<int64_t>(1, std::llround(0.15 * L));  // masked positions
    const int64_t W = c.embedding_width > 0 ? c.embedding_width : H;
    mlm = std::make_unique<MaskedLmHead>(H, W, c.vocab_size, parse_activation(c.inner_activation),
                                         c.initializer_range, derive_key(c.seed, 11));
    nsp = std::make_unique<ClassificationHead>(H, 2, c.output_dropout, c.initializer_range,
                                               derive_key(c.seed, 12));
    ids = Tensor({B, L}), mask = Tensor({B, L}, 1.f), positions = Tensor({B, P});
    mlm_labels.resize(B * P), nsp_labels.resize(B);
    const int64_t first = rank * B * L;
    for (int64_t i = 0; i < B * L; ++i)
      ids[i] = static_cast<float>(static_cast<int64_t>(uniform01(1, first + i) * c.vocab_size));
    for (int64_t b = 0; b < B; ++b) {
      nsp_labels[b] = b % 2;
      for (int64_t p = 0; p < P; ++p) {
        positions[b * P + p] = static_cast<float>((p * L / P + b) % L);
        mlm_labels[b * P + p] =
            static_cast<int64_t>(uniform01(2, rank * B * P + b * P + p) * c.vocab_size);
      }
    }
    refresh_params();
  }
  void refresh_params() {  // after the MoE layers' storage is sharded
    params = net->params();
    for (auto& p : mlm->params()) params.push_back(p);
    for (auto& p : nsp->params()) params.push_back(p);
  }
  // Forward, both heads and losses, backward (no optimizer update).
  void train_step(const ForwardOptions& opt) {
    zero_grads(params);
    const SparseMixerMetrics met = net->forward({&ids, &mask}, opt);
    mlm->forward(net->sequence_output(), positions, net->embeddings().word, mlm_logits);
    nsp->forward(net->pooled_output(), nsp_logits, opt);
    loss = softmax_cross_entropy(mlm_logits, mlm_labels, nullptr, &dmlm) +
           softmax_cross_entropy(nsp_logits, nsp_labels, nullptr, &dnsp) + met.loss;
    dseq.resize(net->sequence_output().shape());
    dseq.zero();
    mlm->backward(dmlm, net->embeddings().word, dseq, net->embeddings().word_grad);
    nsp->backward(dnsp, dpooled);
    net->backward(&dseq, &dpooled);
  }
};

json bench_preset(const ModelBenchArgs& a, const std::string& name) {
  Rig rig(a, name, 0);
  SparseMixer& net = *rig.net;
  const int64_t B = rig.B, L = rig.L, H = rig.H;
  const SparseMixerInputs in{&rig.ids, &rig.mask};
  const int64_t num_params = count_params(rig.params);

  json r = {{"preset", name},
            {"params", num_params},
            {"batch", B},
            {"sequence_length", L},
            {"tokens", B * L}};
  // GEMM work of one call of fn, in GFLOP.
  auto gemm_gflop = [](auto&& fn) {
    const uint64_t before = gemm_flops();
    fn();
    return static_cast<double>(gemm_flops() - before) / 1e9;
  };
  {  // the library's own rate on the network's largest dense shape
    Tensor ga({B * L, H}, 0.5f), gb({H, 4 * H}, 0.25f), gc({B * L, 4 * H});
    const double t = time_it(
        [&] {
          gemm_library_threaded(false, false, B * L, 4 * H, H, ga.data(), gb.data(), gc.data());
        },
        0.2, 3);
    r["library_gemm_gflops"] = 2.0 * B * L * 4 * H * H / t / 1e9;
  }
  if (a.mode != "train") {
    // As `eval` and `predict` run a loaded model: weights packed once beforehand.
    r["inference_packed_weight_bytes"] = a.no_pack ? 0 : net.prepare_inference();
    auto infer = [&] { net.forward(in, {.training = false, .save_for_backward = false}); };
    const double t = time_it(infer, a.min_time, a.min_runs);
    r["inference_ms"] = t * 1e3;
    r["inference_tokens_per_s"] = B * L / t;
    r["inference_gflops"] = gemm_gflop(infer) / t;
  }
  if (a.mode != "infer") {
    uint64_t step = 0;
    auto train_step = [&] { rig.train_step({true, ++step}); };
    const double t = time_it(train_step, a.min_time, a.min_runs);
    check_arg(std::isfinite(rig.loss), "bench model: non-finite loss");
    r["train_step_ms"] = t * 1e3;
    r["train_tokens_per_s"] = B * L / t;
    r["train_gflops"] = gemm_gflop(train_step) / t;
  }
  return r;
}

// Under mpirun: a pretraining step of the preset with every MoE layer's experts split over the
// ranks, each rank holding --batch sequences of a batch P times as large (weak scaling), the
// gradients then summed over the ranks (train/data_parallel.h). Reported against *alone*: every
// rank running the same step on its own batch with no exchange, all at once. Per MoE layer: the
// exposed exchange and expert compute time of the last step and the bytes it sent per token.
json bench_preset_distributed(const ModelBenchArgs& a, const std::string& name, Communicator& w) {
  const int P = w.size(), rank = w.rank();
  Rig rig(a, name, rank);
  const int64_t B = rig.B, L = rig.L;
  std::vector<MoeLayer*> moe;
  for (int64_t l = 0; l < rig.c.num_layers; ++l)
    if (MoeLayer* m = rig.net->block(l).moe_layer()) moe.push_back(m);
  uint64_t step = 0;
  const double alone = time_collective(w, a.min_runs, [&] { rig.train_step({true, ++step}); });
  // Experts split over the ranks, storage included: a rank keeps its own experts' weights and
  // gradients, and the gradient sum leaves them out (each owner's is already the step's).
  int64_t whole_bytes = 0;
  for (const ParamRef& p : rig.params) whole_bytes += 4 * p.value->numel();
  for (MoeLayer* m : moe) m->set_communicator(&w, true);
  rig.refresh_params();
  int64_t bytes = 0, summed = 0;
  for (const ParamRef& p : rig.params) {
    bytes += 4 * p.value->numel();
    if (!p.sharded) summed += 4 * p.value->numel();
  }
  ForwardOptions opt{true, 0};
  opt.token_offset = rank * B * L, opt.sequence_offset = rank * B;
  opt.global_tokens = P * B * L, opt.units = P;  // each rank's batch is one unit
  GradientTree tree;
  double sum_seconds = 0;
  const double t = time_collective(w, a.min_runs, [&] {
    opt.step = ++step;
    rig.train_step(opt);
    const auto t0 = std::chrono::steady_clock::now();
    tree.add_unit(rig.params);
    tree.finish(rig.params, w);
    sum_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  });
  check_arg(std::isfinite(rig.loss), "bench model: non-finite loss");
  json layers = json::array();
  for (int64_t l = 0, i = 0; l < rig.c.num_layers; ++l) {
    if (!rig.net->block(l).moe_layer()) continue;
    const ExchangeRows& ep = moe[i++]->activations().experts.ep;
    layers.push_back({{"layer", l},
                      {"experts_owned", ep.shard.count},
                      {"exchange_ms", ep.exchange_seconds * 1e3},
                      {"expert_compute_ms", ep.compute_seconds * 1e3},
                      {"bytes_sent_per_token", static_cast<double>(ep.bytes_sent) / (B * L)}});
  }
  return {{"preset", name},
          {"params", count_params(rig.params)},
          {"processes", P},
          {"rank", rank},
          {"batch_per_rank", B},
          {"sequence_length", L},
          {"train_step_ms", t * 1e3},
          {"train_tokens_per_s", P * B * L / t},
          {"gradient_sum_ms", sum_seconds * 1e3},
          {"gradient_sum_bytes", summed},
          {"weight_bytes_per_rank", bytes},
          {"weight_bytes_one_process", whole_bytes},
          {"alone_train_step_ms", alone * 1e3},
          {"scaling_efficiency", alone / t},
          {"moe_layers", layers}};
}

int run_bench_model_distributed(const ModelBenchArgs& a, const std::vector<std::string>& names) {
  check_arg(a.mode != "infer",
            "--mode infer: under mpirun bench model times the pretraining step only");
  Communicator& w = world();
  const json env = bench_environment(w);
  const bool print = w.rank() == 0;
  if (print && !a.json_out)
    std::cout << "sparsemoe bench model  batch=" << a.batch << " per rank, " << w.size()
              << " processes (experts split, gradients summed)\nenvironment: " << env.dump()
              << "\n";
  json results = json::array();
  for (const auto& name : names) {
    json r = bench_preset_distributed(a, name, w);
    results.push_back(r);
    if (!print || a.json_out) continue;
    std::cout << fmt::format(
        "{}: train step {:.1f} ms, {:.0f} tok/s (all ranks), gradient sum {:.1f} ms ({} of "
        "dense gradients) | alone {:.1f} ms: scaling efficiency {:.0f}% | weights per rank {} "
        "(one process: {})\n",
        name, r["train_step_ms"].get<double>(), r["train_tokens_per_s"].get<double>(),
        r["gradient_sum_ms"].get<double>(), format_bytes(r["gradient_sum_bytes"].get<double>()),
        r["alone_train_step_ms"].get<double>(), 100 * r["scaling_efficiency"].get<double>(),
        format_bytes(r["weight_bytes_per_rank"].get<double>()),
        format_bytes(r["weight_bytes_one_process"].get<double>()));
    for (const auto& l : r["moe_layers"])
      std::cout << fmt::format(
          "  MoE layer {} (rank 0, {} experts): exchange {:.2f} ms, expert compute {:.2f} ms, "
          "{:.0f} bytes sent per token\n",
          l["layer"].get<int64_t>(), l["experts_owned"].get<int64_t>(),
          l["exchange_ms"].get<double>(), l["expert_compute_ms"].get<double>(),
          l["bytes_sent_per_token"].get<double>());
  }
  if (print && a.json_out)
    std::cout << json{{"environment", env}, {"results", results}}.dump(2) << "\n";
  return 0;
}

int run_bench_model(const ModelBenchArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  check_arg(a.mode == "train" || a.mode == "infer" || a.mode == "both",
            "--mode: expected train, infer or both, got '" + a.mode + "'");
  json env = bench_environment();
  const double peak = fma_peak_gflops(num_threads());
  env["fma_peak_gflops"] = peak;
  const std::vector<std::string> names = split(a.presets, ',');
  check_arg(!names.empty(), "--preset: expected at least one preset name or config file");
  if (world().size() > 1) return run_bench_model_distributed(a, names);
  if (!a.json_out)
    std::cout << "sparsemoe bench model  batch=" << a.batch << " mode=" << a.mode
              << "\nenvironment: " << env.dump() << "\nmachine: FMA peak " << static_cast<int>(peak)
              << " GFLOP/s (" << env["simd"].get<std::string>() << ", " << num_threads()
              << " threads), library " << env["blas"].get<std::string>() << " at "
              << env["blas_isa"].get<std::string>() << "\n";
  json results = json::array();
  for (const auto& name : names) {
    json r = bench_preset(a, name);
    for (const std::string k : {"inference", "train"})
      if (r.contains(k + "_gflops")) {
        r[k + "_percent_of_fma_peak"] = 100 * r[k + "_gflops"].get<double>() / peak;
        r[k + "_percent_of_library_gemm"] =
            100 * r[k + "_gflops"].get<double>() / r["library_gemm_gflops"].get<double>();
      }
    results.push_back(r);
    if (!a.json_out) {
      std::cout << name << ": " << r["params"].get<int64_t>() << " params, " << a.batch << " x "
                << r["sequence_length"].get<int64_t>() << " tokens";
      for (const std::string k : {"inference", "train"}) {
        if (!r.contains(k + "_gflops")) continue;
        std::cout << " | " << (k == "train" ? "train step " : "inference ")
                  << r[k == "train" ? "train_step_ms" : "inference_ms"].get<double>() << " ms, "
                  << std::llround(r[k + "_tokens_per_s"].get<double>()) << " tok/s, "
                  << std::llround(r[k + "_gflops"].get<double>()) << " GFLOP/s ("
                  << std::llround(r[k + "_percent_of_fma_peak"].get<double>()) << "% of peak, "
                  << std::llround(r[k + "_percent_of_library_gemm"].get<double>())
                  << "% of library GEMM)";
      }
      std::cout << " | library GEMM " << std::llround(r["library_gemm_gflops"].get<double>())
                << " GFLOP/s" << std::endl;
    }
  }
  // Speed relative to the baseline preset, when it was measured.
  const json* base = nullptr;
  for (const auto& r : results)
    if (r["preset"] == a.baseline) base = &r;
  if (base)
    for (auto& r : results)
      for (const std::string k : {"inference", "train"})
        if (r.contains(k + "_tokens_per_s"))
          r[k + "_speedup_vs_" + a.baseline] =
              r[k + "_tokens_per_s"].get<double>() / (*base)[k + "_tokens_per_s"].get<double>();
  if (a.json_out) {
    std::cout << json{{"environment", env}, {"results", results}}.dump(2) << "\n";
  } else if (base) {
    for (const auto& r : results) {
      std::cout << r["preset"].get<std::string>() << " vs " << a.baseline << ":";
      for (const char* k : {"train", "inference"}) {
        const std::string key = std::string(k) + "_speedup_vs_" + a.baseline;
        if (r.contains(key)) std::cout << " " << k << " " << r[key].get<double>() << "x";
      }
      std::cout << "\n";
    }
  }
  return 0;
}

}  // namespace

void add_bench_model_command(CLI::App& bench, std::function<int()>& run) {
  auto* model = bench.add_subcommand(
      "model", "Time whole networks (inference and a pretraining step) from presets");
  auto a = std::make_shared<ModelBenchArgs>();
  model
      ->add_option("--preset", a->presets,
                   "comma-separated preset names or JSON config files (presets: tiny, "
                   "sparse_mixer_base, fast_sparse_mixer, bert_base, fnet_base)")
      ->capture_default_str();
  model->add_option("--baseline", a->baseline, "preset the others are compared with")
      ->capture_default_str();
  model->add_option("--set", a->sets, "key=value config override, for every preset (repeatable)");
  model->add_option("--batch", a->batch, "sequences per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  model->add_option("--mode", a->mode, "train, infer or both")
      ->capture_default_str()
      ->check(CLI::IsMember({"train", "infer", "both"}));
  model->add_option("--threads", a->threads, "threads (default: OpenMP default)")
      ->check(CLI::Range(1, kMaxThreads));
  model->add_option("--min-time", a->min_time, "seconds per measurement")->capture_default_str();
  model->add_option("--min-runs", a->min_runs, "timed runs per measurement (median reported)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  model->add_flag("--json", a->json_out, "machine-readable output");
  model->add_flag("--no-pack", a->no_pack,
                  "inference packs the weights on every call instead of once beforehand");
  model->callback([&run, a] { run = [a] { return run_bench_model(*a); }; });
}

}  // namespace sparsemoe::cli
