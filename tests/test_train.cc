// The trainer: config parsing and overrides, checkpoint round trip and every corrupt-checkpoint
// error, bitwise resume (N + N steps == 2N, mid-phase and at the phase boundary), a stop signal,
// a non-finite loss, the run directory's files, and that training learns the synthetic task.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/io/safetensors.h"
#include "sparsemoe/train/checkpoint.h"
#include "sparsemoe/train/trainer.h"
#include "test_util.h"
#include "train_fixtures.h"

namespace sparsemoe {
namespace {

namespace fs = std::filesystem;

std::string fresh_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/train_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

using test::error_of;

// metrics.jsonl without the wall-clock fields, for run-to-run comparison; only the evaluation
// records when `evals_only`.
std::string metrics_without_timing(const std::string& run, bool evals_only = false) {
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line, out;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (evals_only && j["event"] != "eval") continue;
    j.erase("tokens_per_s");
    j.erase("seconds");
    out += j.dump() + "\n";
  }
  return out;
}

// A run directory written before the MoE keys were nested still loads: its config.json is upgraded
// in memory (the file, and so its hash in the checkpoints, stays as it was).
TEST(TrainConfig, OldRunConfigsAreUpgraded) {
  const nlohmann::json old = nlohmann::json::parse(R"({
    "model": {"vocab_size": 60, "hidden_size": 16, "num_layers": 3, "moe_layers": [1],
              "attention_layers": [2], "num_experts": 4, "train_capacity_factor": 1.25,
              "num_attention_heads": 2, "max_sequence_length": 12, "inner_dim": 32,
              "router": {"type": "tokens_choose", "num_selected_experts": 2}},
    "pretrain": {"steps": 3}, "aux_loss_factor": 0.02})");
  const std::string e = error_of([&] { TrainConfig::from_json(old); });
  EXPECT_NE(e.find("'aux_loss_factor' is now"), std::string::npos) << e;
  const TrainConfig c = TrainConfig::from_json(upgrade_run_config(old));
  EXPECT_EQ(c.model.moe.experts.num_experts, 4);
  EXPECT_EQ(c.model.moe.train_capacity_factor, 1.25);
  EXPECT_EQ(c.model.moe.router.type, RouterType::kTokensChoose);
  EXPECT_EQ(c.model.moe.router.num_selected_experts, 2);
  EXPECT_EQ(c.model.moe.router.load_balancing_loss_weight, 0.02);
  EXPECT_EQ(c.model.moe.router.router_z_loss_weight, 1e-4);  // the old default factor
  // A current config passes through unchanged.
  EXPECT_EQ(upgrade_run_config(c.to_json()), c.to_json());
}

TEST(TrainConfig, StrictKeysOverridesAndPresets) {
  const std::string dir = fresh_dir("config");
  const std::string path = dir + "/c.json";
  write_file_atomic(path,
                    R"({"model": "tiny", "pretrain": {"steps": 3}, "finetune": {"steps": 2}})");
  TrainConfig c = load_train_config(
      path,
      {"model.moe.experts.num_experts=8", "pretrain.optimizer.learning_rate=0.5", "batch_size=4",
       "data.path=/x", "model.moe.dropless=true", "model.moe.router.type=tokens_choose",
       "model.moe.experts.glu=true", "model.moe.experts.inner_dropout=0.2",
       "model.moe.router.load_balancing_loss_weight=0.03"});
  EXPECT_EQ(c.model.moe.experts.num_experts, 8);
  EXPECT_TRUE(c.model.moe.dropless);
  EXPECT_TRUE(c.model.moe.experts.glu);
  EXPECT_EQ(c.model.moe.experts.inner_dropout, 0.2);
  EXPECT_EQ(c.model.hidden_size, 64);  // from the tiny preset
  EXPECT_EQ(c.pretrain.optimizer.learning_rate, 0.5);
  EXPECT_EQ(c.batch_size, 4);
  EXPECT_EQ(c.data.path, "/x");
  EXPECT_EQ(c.total_steps(), 5);
  EXPECT_EQ(c.optimizer_for(c.pretrain).total_steps, 3);
  // The MoE loss weights are the router's, set like any other MoE option.
  EXPECT_EQ(c.model.moe.router.load_balancing_loss_weight, 0.03);
  EXPECT_EQ(c.model.moe.router.router_z_loss_weight, 0.0);
  // Round trip through JSON.
  const TrainConfig d = TrainConfig::from_json(c.to_json());
  EXPECT_EQ(d.to_json(), c.to_json());
  std::string e = error_of([&] { load_train_config(path, {"pretrian.steps=3"}); });
  EXPECT_NE(e.find("unknown key 'pretrian'"), std::string::npos) << e;
  e = error_of([&] { load_train_config(path, {"pretrain.optimizer.lr=1"}); });
  EXPECT_NE(e.find("TrainConfig.pretrain.optimizer: unknown key 'lr'"), std::string::npos) << e;
  e = error_of([&] { load_train_config(path, {"aux_loss_factor=0.1"}); });
  EXPECT_NE(e.find("'aux_loss_factor' is now 'model.moe.router.load_balancing_loss_weight'"),
            std::string::npos)
      << e;
  e = error_of([&] { load_train_config(path, {"batch_size=0"}); });
  EXPECT_NE(e.find("batch_size: expected >= 1, got 0"), std::string::npos) << e;
  e = error_of([&] { load_train_config(path, {"data.format=csv"}); });
  EXPECT_NE(e.find("TrainConfig.data: format: expected one of wordnet, tsv, got 'csv'"),
            std::string::npos)
      << e;
  e = error_of([&] { load_train_config(path, {"pretrain.steps.x=1"}); });
  EXPECT_NE(e.find("'pretrain.steps' is not an object"), std::string::npos) << e;
  e = error_of([&] { load_train_config(path, {"noequals"}); });
  EXPECT_NE(e.find("expected key=value"), std::string::npos) << e;
  e = error_of([&] { load_train_config(dir + "/missing.json"); });
  EXPECT_NE(e.find("missing.json"), std::string::npos) << e;
  write_file_atomic(dir + "/bad.json", "{");
  e = error_of([&] { load_train_config(dir + "/bad.json"); });
  EXPECT_NE(e.find("invalid JSON: parse error at line 1"), std::string::npos) << e;
}

TEST(Checkpoint, RoundTripRestoresWeightsAndOptimizerExactly) {
  const std::string dir = fresh_dir("ckpt_rt");
  TrainConfig c = test::tiny_train_config(dir);
  c.model.vocab_size = 60;
  TaskModel a(c, 3);
  std::vector<ParamRef> pa = a.pretrain_params();
  for (const ParamRef& p : pa) *p.grad = test::random_tensor(p.grad->shape(), 3);
  AdamW opt(c.optimizer_for(c.pretrain), pa);
  opt.step(pa);
  opt.step(pa);
  save_checkpoint(dir + "/c.safetensors", a, &opt, {7, "pretrain", 2, 5, "abc"});
  TrainConfig c2 = c;
  c2.model.seed = 99;  // different initial weights
  TaskModel b(c2, 3);
  AdamW opt2(c.optimizer_for(c.pretrain), b.pretrain_params());
  const CheckpointState s = load_checkpoint(dir + "/c.safetensors", b, &opt2);
  EXPECT_EQ(s.step, 7);
  EXPECT_EQ(s.phase, "pretrain");
  EXPECT_EQ(s.optimizer_step, 2);
  EXPECT_EQ(s.seed, 5u);
  EXPECT_EQ(s.config_hash, "abc");
  const auto wa = a.all_params(), wb = b.all_params();
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_EQ(wa[i].name, wb[i].name);
    EXPECT_TRUE(test::bitwise_equal(*wa[i].value, *wb[i].value)) << wa[i].name;
  }
  // The next optimizer step is identical too.
  std::vector<ParamRef> pb = b.pretrain_params();
  for (size_t i = 0; i < pa.size(); ++i) *pb[i].grad = *pa[i].grad;
  opt.step(pa);
  opt2.step(pb);
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(test::bitwise_equal(*pa[i].value, *pb[i].value)) << pa[i].name;
}

TEST(Checkpoint, CorruptOrMismatchedCheckpointsAreClearErrors) {
  const std::string dir = fresh_dir("ckpt_bad");
  TrainConfig c = test::tiny_train_config(dir);
  c.model.vocab_size = 60;
  TaskModel m(c, 3);
  const std::string good = dir + "/good.safetensors";
  save_checkpoint(good, m, nullptr, {1, "pretrain", 0, 5, "h"});
  const auto load_into = [&](const TrainConfig& cfg, int64_t classes, const std::string& p) {
    TaskModel t(cfg, classes);
    return error_of([&] { load_checkpoint(p, t, nullptr); });
  };
  EXPECT_EQ(load_into(c, 3, good), "no error");
  // Another model shape: the error names the tensor and both shapes.
  TrainConfig wider = c;
  wider.model.inner_dim = 48;
  std::string e = load_into(wider, 3, good);
  EXPECT_NE(e.find("has shape"), std::string::npos) << e;
  EXPECT_NE(e.find("the model expects"), std::string::npos) << e;
  e = load_into(c, 4, good);
  EXPECT_NE(e.find("'classifier/"), std::string::npos) << e;
  // A safetensors file that is not a checkpoint.
  const Tensor t({2}, {1, 2});
  save_safetensors(dir + "/plain.safetensors", {{"a", &t}});
  e = load_into(c, 3, dir + "/plain.safetensors");
  EXPECT_NE(e.find("is not a sparsemoe checkpoint"), std::string::npos) << e;
  // A missing tensor and an extra one.
  const SafetensorsFile f = load_safetensors(good);
  std::vector<std::pair<std::string, const Tensor*>> some;
  for (size_t i = 1; i < f.tensors.size(); ++i)
    some.emplace_back(f.tensors[i].first, &f.tensors[i].second);
  save_safetensors(dir + "/missing.safetensors", some, f.metadata);
  e = load_into(c, 3, dir + "/missing.safetensors");
  EXPECT_NE(e.find("no tensor '" + f.tensors[0].first + "'"), std::string::npos) << e;
  some.emplace_back(f.tensors[0].first, &f.tensors[0].second);
  some.emplace_back("model/extra", &t);
  save_safetensors(dir + "/extra.safetensors", some, f.metadata);
  e = load_into(c, 3, dir + "/extra.safetensors");
  EXPECT_NE(e.find("tensor 'model/extra' is not a parameter"), std::string::npos) << e;
  // Bad metadata; a truncated file (the safetensors reader's own errors).
  auto meta = f.metadata;
  meta["step"] = "-3";
  save_safetensors(dir + "/meta.safetensors", some, meta);
  e = error_of([&] { read_checkpoint_state(dir + "/meta.safetensors"); });
  EXPECT_NE(e.find("metadata 'step' must be an integer in [0, 9223372036854775807], got '-3'"),
            std::string::npos)
      << e;
  meta["step"] = "99999999999999999999999";  // once std::stoll's raw "stoll" message
  save_safetensors(dir + "/meta.safetensors", some, meta);
  e = error_of([&] { read_checkpoint_state(dir + "/meta.safetensors"); });
  EXPECT_NE(e.find("metadata 'step' must be an integer in"), std::string::npos) << e;
  const std::string bytes = read_file(good);
  write_file_atomic(dir + "/short.safetensors", bytes.substr(0, bytes.size() - 4));
  e = load_into(c, 3, dir + "/short.safetensors");
  EXPECT_NE(e.find("short.safetensors"), std::string::npos) << e;
  // An optimizer state that does not match.
  AdamW opt(c.optimizer_for(c.pretrain), m.pretrain_params());
  e = error_of([&] { load_checkpoint(good, m, &opt); });
  EXPECT_NE(e.find("optimizer state: no tensor 'm/"), std::string::npos) << e;
}

TEST(Trainer, ResumeIsBitwiseIdenticalToAnUninterruptedRun) {
  const std::string dir = fresh_dir("resume");
  const TrainConfig c = test::tiny_train_config(dir, 6, 6);
  Trainer(c, dir + "/full", {}).run();
  const std::string full = read_file(dir + "/full/checkpoint.safetensors");
  // Stopped mid-pretraining (step 3, between checkpoints), and at the phase boundary (step 6).
  for (int64_t stop : {3, 6, 10}) {
    const std::string run = dir + "/split" + std::to_string(stop);
    TrainResult r = Trainer(c, run, {.stop_after_step = stop}).run();
    EXPECT_EQ(r.outcome, TrainOutcome::kStopped);
    EXPECT_EQ(r.step, stop);
    EXPECT_EQ(read_checkpoint_state(run + "/checkpoint.safetensors").step, stop);
    r = Trainer::resume(run, {})->run();
    EXPECT_EQ(r.outcome, TrainOutcome::kFinished);
    EXPECT_EQ(r.step, 12);
    EXPECT_TRUE(read_file(run + "/checkpoint.safetensors") == full)
        << "resumed at " << stop << ": the final checkpoint differs from the uninterrupted run's";
    EXPECT_EQ(read_file(run + "/results.json"), read_file(dir + "/full/results.json"));
    // Evaluations are identical; so is every training record when the stop falls on a logging
    // boundary (a window cut by a stop is logged in two parts).
    EXPECT_EQ(metrics_without_timing(run, true), metrics_without_timing(dir + "/full", true));
    if (stop % c.log_every == 0) {
      EXPECT_EQ(metrics_without_timing(run), metrics_without_timing(dir + "/full"));
    }
  }
  // A different seed gives a different model (the comparison above can fail).
  TrainConfig other = c;
  other.seed = 6;
  Trainer(other, dir + "/other", {}).run();
  EXPECT_FALSE(read_file(dir + "/other/checkpoint.safetensors") == full);
}

// --compare-dense hands the MoE run's tokenizer and prepared data to its other runs: a run given
// them trains the same bits as one that prepares the data itself; the data is encoded in parallel
// and is the same at every thread count.
TEST(Trainer, SharedDataTrainsTheSameModel) {
  const std::string dir = fresh_dir("shared_data");
  const TrainConfig c = test::tiny_train_config(dir, 4, 4);
  write_file_atomic(c.data.path, test::synthetic_corpus(1500));  // several chunks of 512
  Trainer a(c, dir + "/a", {});
  a.run();
  const Corpus corpus = load_corpus(c.data);
  // Each split holds its examples' encodings, one by one (in the split's fixed shuffled order).
  for (int s = 0; s < 3; ++s) {
    std::vector<std::pair<std::vector<int>, int64_t>> want, got;
    for (const TextExample& e : corpus.examples) {
      if (static_cast<int>(e.split) == s) want.emplace_back(a.tokenizer().encode(e.text), e.label);
    }
    const TokenizedSet& set = a.data().classify[s];
    for (int64_t i = 0; i < set.size(); ++i) got.emplace_back(set.tokens[i], set.labels[i]);
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    EXPECT_TRUE(got == want) << "split " << s;
  }
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    const TaskData d = prepare_task_data(c.data, corpus, a.tokenizer());
    for (int s = 0; s < 3; ++s) {
      EXPECT_EQ(d.classify[s].tokens, a.data().classify[s].tokens) << threads << " threads";
      EXPECT_EQ(d.classify[s].labels, a.data().classify[s].labels) << threads << " threads";
    }
    for (int s = 0; s < 2; ++s) EXPECT_EQ(d.pretrain[s].tokens, a.data().pretrain[s].tokens);
  }
  set_num_threads(0);
  ASSERT_GT(a.data().classify[0].size(), 1000);
  Trainer(c, dir + "/own", {.tokenizer = &a.tokenizer()}).run();
  Trainer(c, dir + "/shared", {.tokenizer = &a.tokenizer(), .data = &a.data()}).run();
  for (const char* f : {"checkpoint.safetensors", "labels.json", "results.json"}) {
    EXPECT_TRUE(read_file(dir + "/shared/" + f) == read_file(dir + "/own/" + f)) << f;
    EXPECT_TRUE(read_file(dir + "/shared/" + f) == read_file(dir + "/a/" + f)) << f;
  }
  const std::string e = error_of([&] { Trainer(c, dir + "/bad", {.data = &a.data()}); });
  EXPECT_NE(e.find("without the tokenizer"), std::string::npos) << e;
}

TEST(Trainer, StopSignalCheckpointsAndResumes) {
  const std::string dir = fresh_dir("signal");
  const TrainConfig c = test::tiny_train_config(dir, 6, 4);
  std::atomic<int> flag{0};
  TrainOptions opt;
  opt.stop_signal = &flag;
  flag = 2;  // as if SIGINT arrived during the first step
  TrainResult r = Trainer(c, dir + "/run", opt).run();
  EXPECT_EQ(r.outcome, TrainOutcome::kInterrupted);
  EXPECT_EQ(r.step, 1);
  EXPECT_EQ(read_checkpoint_state(dir + "/run/checkpoint.safetensors").step, 1);
  EXPECT_TRUE(fs::exists(dir + "/run/report.html"));
  r = Trainer::resume(dir + "/run", {})->run();
  EXPECT_EQ(r.outcome, TrainOutcome::kFinished);
  // A new run refuses a directory that holds one.
  const std::string e = error_of([&] { Trainer(c, dir + "/run", {}); });
  EXPECT_NE(e.find("already holds a run"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { Trainer::resume(dir + "/nothing", {}); }).find("holds no run"),
            std::string::npos);
}

TEST(Trainer, NonFiniteLossStopsAndKeepsTheLastGoodCheckpoint) {
  const std::string dir = fresh_dir("nan");
  TrainConfig c = test::tiny_train_config(dir, 20, 0);
  c.pretrain.optimizer.learning_rate = 1e30;  // the first update overflows the weights
  c.pretrain.optimizer.warmup_steps = 0;
  c.pretrain.optimizer.clip_norm = 0;
  c.checkpoint_every = 1;
  Trainer t(c, dir + "/run", {});
  std::string e = error_of([&] { t.run(); });
  EXPECT_NE(e.find("is not finite at step"), std::string::npos) << e;
  EXPECT_NE(e.find("the last good checkpoint is kept"), std::string::npos) << e;
  // The checkpoint on disk is from before the failing step, and loads.
  const CheckpointState s = read_checkpoint_state(dir + "/run/checkpoint.safetensors");
  EXPECT_LT(s.step, t.step() + 1);
  const LoadedRun run = load_run(dir + "/run");
  for (const ParamRef& p : run.model->all_params()) {
    for (int64_t i = 0; i < p.value->numel(); ++i)
      ASSERT_TRUE(std::isfinite((*p.value)[i])) << p.name;
  }
}

TEST(Trainer, RunDirectoryHoldsEverythingAndTheModelLearns) {
  const std::string dir = fresh_dir("learn");
  TrainConfig c = test::tiny_train_config(dir, 20, 60);
  c.finetune.optimizer.learning_rate = 1e-2;
  c.eval_batches = 0;
  const TrainResult r = Trainer(c, dir + "/run", {}).run();
  for (const char* f : {"config.json", "tokenizer.model", "labels.json", "checkpoint.safetensors",
                        "metrics.jsonl", "results.json", "report.html"})
    EXPECT_TRUE(fs::exists(dir + "/run/" + f)) << f;
  // The label is in the words: the model beats always guessing the majority class by far.
  EXPECT_GT(r.test.accuracy, r.majority_accuracy + 0.2)
      << "test " << r.test.accuracy << " majority " << r.majority_accuracy;
  // metrics.jsonl: train records with the loss parts and per-layer MoE metrics, dev evaluations.
  std::istringstream in(read_file(dir + "/run/metrics.jsonl"));
  std::string line;
  int train = 0, dev = 0, test_records = 0;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == "train") {
      ++train;
      for (const char* k :
           {"loss", "task_loss", "aux_loss", "z_loss", "learning_rate", "grad_norm"})
        EXPECT_TRUE(j.contains(k)) << k;
      const auto& layer = j["moe"]["layer_1"];
      EXPECT_EQ(layer["tokens_per_expert"].size(), 4u);
      EXPECT_TRUE(layer.contains("fraction_tokens_left_behind"));
      EXPECT_NEAR(
          j["loss"].get<double>(),
          j["task_loss"].get<double>() + j["aux_loss"].get<double>() + j["z_loss"].get<double>(),
          1e-9);
    }
    if (j["event"] == "eval") (j["split"] == "dev" ? dev : test_records)++;
  }
  EXPECT_EQ(train, 40);
  EXPECT_GE(dev, 20);
  EXPECT_EQ(test_records, 1);
  // The run loads back for use, and its predictions are the trainer's.
  LoadedRun run = load_run(dir + "/run");
  EXPECT_EQ(run.labels, (std::vector<std::string>{"animal", "food", "tool"}));
  EXPECT_EQ(run.step, 80);
  const TaskData d =
      prepare_task_data(run.config.data, load_corpus(run.config.data), run.tokenizer);
  const auto p = predict_probabilities(*run.model, d.classify[2].tokens, 8);
  ASSERT_EQ(static_cast<int64_t>(p.size()), d.classify[2].size());
  int64_t correct = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_NEAR(std::accumulate(p[i].begin(), p[i].end(), 0.0), 1.0, 1e-5);
    correct += std::max_element(p[i].begin(), p[i].end()) - p[i].begin() == d.classify[2].labels[i];
  }
  EXPECT_EQ(correct, static_cast<int64_t>(std::llround(r.test.accuracy * r.test.count)));
}

}  // namespace
}  // namespace sparsemoe
