// The training loop (see trainer.h).
#include "sparsemoe/train/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/train/checkpoint.h"
#include "sparsemoe/train/report.h"

namespace sparsemoe {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kTrainMask = 0x747261696e6d736bull;  // "trainmsk": training MLM corruption
constexpr uint64_t kOrder = 0x6f72646572ull;            // "order": the per-epoch permutations

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string hex(uint64_t v) { return fmt::format("{:016x}", v); }

std::string duration_str(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, t / 60 % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// config.json of a run, strictly parsed; also returns its text (for the hash).
TrainConfig read_run_config(const std::string& path, std::string* text_out) {
  const std::string text = read_file(path);
  if (text_out) *text_out = text;
  return parse_run_config(text, path);
}

Tokenizer read_run_tokenizer(const std::string& path, const TrainConfig& c) {
  Tokenizer t = Tokenizer::load(path);
  if (t.vocab_size() != c.model.vocab_size)
    throw IoError("'" + path + "' has " + std::to_string(t.vocab_size()) +
                  " pieces but config.json says vocab_size " + std::to_string(c.model.vocab_size));
  return t;
}

}  // namespace

TrainConfig parse_run_config(const std::string& text, const std::string& path) {
  try {
    return TrainConfig::from_json(upgrade_run_config(parse_json(text, "JSON")));
  } catch (const ConfigError& e) {
    throw IoError("'" + path + "': " + e.what());
  }
}

std::vector<std::string> parse_run_labels(const std::string& text, const std::string& path) {
  nlohmann::json labels;
  try {
    labels = parse_json(text, "JSON");
  } catch (const ConfigError& e) {
    throw IoError("'" + path + "': " + e.what());
  }
  if (!labels.is_array() || labels.empty())
    throw IoError("'" + path + "': expected a non-empty JSON array of label names");
  std::vector<std::string> out;
  for (const auto& l : labels) {
    if (!l.is_string()) throw IoError("'" + path + "': labels must be strings");
    out.push_back(l.get<std::string>());
  }
  return out;
}

LoadedRun load_run(const std::string& run_dir) {
  const auto file = [&](const char* name) { return (fs::path(run_dir) / name).string(); };
  if (!fs::exists(file("config.json")))
    throw IoError("'" + run_dir +
                  "' is not a run directory (no config.json); create one with "
                  "`sparsemoe train --config FILE --out " +
                  run_dir + "`");
  LoadedRun r;
  r.config = read_run_config(file("config.json"), nullptr);
  r.tokenizer = read_run_tokenizer(file("tokenizer.model"), r.config);
  r.labels = parse_run_labels(read_file(file("labels.json")), file("labels.json"));
  r.model = std::make_unique<TaskModel>(r.config, static_cast<int64_t>(r.labels.size()));
  r.step = load_checkpoint(file("checkpoint.safetensors"), *r.model, nullptr).step;
  // A loaded run serves inference (eval, predict, inspect): its weights are packed once here
  // instead of on every batch. Anything that changes them goes through params() or a backward,
  // which drop the packed copies.
  r.model->prepare_inference();
  return r;
}

double estimate_training_memory(const TrainConfig& c, int procs) {
  const SparseMixerConfig& m = c.model;
  // Units run one after the other: one unit's activations are alive at a time.
  const double B = static_cast<double>(c.batch_size / std::max<int64_t>(1, c.units)),
               L = static_cast<double>(m.max_sequence_length);
  const double H = static_cast<double>(m.hidden_size), F = static_cast<double>(m.inner_dim);
  const double V = static_cast<double>(std::max(m.vocab_size, c.tokenizer.vocab_size));
  const double W = m.embedding_width > 0 ? static_cast<double>(m.embedding_width) : H;
  // Weights and gradients of the network and the masked-LM head, AdamW's two moments sharded over
  // the processes, and the gradient tree's copies when there are units; with expert parallelism
  // each process holds 1/P of the experts (the largest share, when P does not divide E).
  const double P = static_cast<double>(std::max(1, procs));
  const double unheld =
      c.expert_parallel && procs > 1 ? m.expert_float_count() - m.expert_float_count(procs) : 0.0;
  const double weights = m.float_count() - unheld + H * W + 2 * W + V;
  const double tree = c.units > 1 || procs > 1 ? 2 : 0;
  double floats = weights * (2 + 2.0 / P + tree);
  // Saved activations per layer: about a dozen [B, L, H] buffers and the FFN's [B, L, F] ones
  // (k times for the MoE layers, whose capacity can dispatch each token k times).
  const double k = static_cast<double>(m.moe.router.num_selected_experts);
  for (int64_t l = 0; l < m.num_layers; ++l) {
    floats += B * L * (16 * H + 4 * F * (m.is_moe_layer(l) ? std::max(k, 2.0) : 1.0));
    // Attention keeps no [B, heads, L, L] scores (nn/attention.h): its blocks are per thread.
  }
  floats += 2 * B * L * V;  // the masked-LM logits and their gradient (an upper bound)
  return 4 * floats + 64.0 * 1024 * 1024;  // and the program itself
}

namespace {
// Refuses a run whose estimated peak memory exceeds what is available; returns the line to log.
std::string check_training_memory(const TrainConfig& c, int procs) {
  const double need = estimate_training_memory(c, procs);
  check_available_memory(need, "training (an estimate of its peak memory)");
  return fmt::format("memory: about {} estimated for training{}, {} available", format_bytes(need),
                     procs > 1 ? fmt::format(" per process ({} processes)", procs) : "",
                     format_bytes(available_memory_bytes()));
}
}  // namespace

// The running means of one logging window.
struct Trainer::Window {
  int64_t steps = 0, tokens = 0;
  double task = 0, moe = 0, lb = 0, z = 0, grad_norm = 0;
  MoeMetricsMean metrics;
  Clock::time_point start = Clock::now();
};

// The data order of the current phase: example i of the phase is perm(epoch)[i % n].
struct Trainer::Order {
  bool pretrain = true;
  int64_t epoch = -1;
  std::vector<int64_t> perm;
};

Trainer::Trainer(const TrainConfig& config, const std::string& run_dir, TrainOptions options)
    : config_(config), run_dir_(run_dir), options_(options) {
  prepare(true);
}

Trainer::Trainer(const std::string& run_dir, TrainOptions options)
    : run_dir_(run_dir), options_(options) {
  prepare(false);
}

namespace {
// The process count must divide the units (and be a power of two: the sum over ranks is a tree).
void check_process_count(const TrainConfig& c, int procs) {
  check_arg((procs & (procs - 1)) == 0 && c.units % procs == 0,
            "units: the " + std::to_string(procs) +
                " processes must each take the same number of the step's units=" +
                std::to_string(c.units) +
                " (a power-of-two process count dividing it); set \"units\" in the config to a "
                "multiple of " +
                std::to_string(procs) +
                " (every process count dividing it then trains to the same bits)");
}
}  // namespace

Trainer::~Trainer() = default;

std::unique_ptr<Trainer> Trainer::resume(const std::string& run_dir, TrainOptions options) {
  return std::unique_ptr<Trainer>(new Trainer(run_dir, options));
}

std::string Trainer::path(const std::string& name) const {
  return (fs::path(run_dir_) / name).string();
}

void Trainer::prepare(bool fresh) {
  window_ = std::make_unique<Window>();
  order_ = std::make_unique<Order>();
  comm_ = options_.comm ? options_.comm : &single_process();
  if (!lead()) options_.log = nullptr;  // progress comes from rank 0
  // On several processes every step that can fail on bad input runs on every rank and is agreed
  // on (agree): a failure on any rank ends all of them together, with that rank's message, before
  // anything waits for it. A new run's config and corpus are every rank's own and are checked
  // before rank 0 writes anything.
  const int P = comm_->size();
  auto together = [&](const std::function<void()>& step) {
    if (P == 1) return step();
    std::string problem;
    try {
      step();
    } catch (const std::exception& e) {
      problem = e.what();
      if (problem.empty()) problem = "unknown error";
    }
    agree(*comm_, problem);
  };
  Corpus corpus;
  if (fresh) {
    together([&] {
      config_.validate();
      check_process_count(config_, P);
      if (P > 1) {
        check_training_memory(config_, P);
        corpus = load_corpus(config_.data);
      }
    });
  }
  together([&] {
    if (lead()) prepare_directory(fresh, P > 1 && fresh ? &corpus : nullptr);
  });
  if (P > 1) share_run(fresh ? &corpus : nullptr, together);
  if (save_initial_) together([&] { save(); });  // collective: the experts come to rank 0
  save_initial_ = false;
  if (comm_->size() > 1) report_processes();
}

void Trainer::report_processes() {
  // What each process holds: the whole dense weights and gradients and its own experts' (with
  // expert_parallel), its share of the optimizer's moments.
  const int P = comm_->size();
  int64_t mine[2] = {optimizer_->state_bytes(), 0};
  for (const ParamRef& p : model_->all_params()) mine[1] += 4 * p.value->numel();
  std::vector<int64_t> all(2 * static_cast<size_t>(P));
  comm_->allgather(mine, sizeof mine, all.data());
  int64_t whole = 0, moments = 0;
  for (const ParamRef& p : model_->all_params()) whole += 4 * shape_numel(p.full_shape());
  for (const ParamRef& p : params_) moments += 8 * shape_numel(p.full_shape());
  int64_t lo[2] = {all[0], all[1]}, hi[2] = {all[0], all[1]};
  for (int q = 0; q < P; ++q)
    for (int i = 0; i < 2; ++i) {
      lo[i] = std::min(lo[i], all[2 * q + i]);
      hi[i] = std::max(hi[i], all[2 * q + i]);
    }
  if (!options_.log) return;
  auto range = [](int64_t a, int64_t b) {
    return a == b ? format_bytes(static_cast<double>(a))
                  : format_bytes(static_cast<double>(a)) + " to " +
                        format_bytes(static_cast<double>(b));
  };
  *options_.log << fmt::format(
      "{} processes, {} units of {} sequences per step, experts {}; per process: {} of weights "
      "and as much of gradients ({} in one process), {} of AdamW moments ({} in one process)\n",
      P, config_.units, config_.batch_size / config_.units,
      config_.expert_parallel ? "split over the processes" : "on every process",
      range(lo[1], hi[1]), format_bytes(static_cast<double>(whole)), range(lo[0], hi[0]),
      format_bytes(static_cast<double>(moments)));
}

void Trainer::build_model() {
  // Split: each rank allocates and initialises its own experts only.
  const bool split = comm_->size() > 1 && config_.expert_parallel;
  const ExpertPlacement placement =
      split ? ExpertPlacement{comm_->rank(), comm_->size()} : ExpertPlacement{};
  model_ = std::make_unique<TaskModel>(config_, static_cast<int64_t>(data_.label_names.size()),
                                       placement);
  for (int64_t l = 0; l < config_.model.num_layers; ++l)
    if (MoeLayer* moe = model_->net.block(l).moe_layer())
      moe->set_communicator(split ? comm_ : nullptr, split);
}

void Trainer::share_run(const Corpus* corpus,
                        const std::function<void(const std::function<void()>&)>& together) {
  std::string config_text, tokenizer_bytes, checkpoint_bytes;
  if (lead()) {  // a fresh start has no checkpoint yet: every rank builds the same initial model
    config_text = read_file(path("config.json"));
    tokenizer_bytes = tokenizer_.bytes();
    if (!save_initial_) checkpoint_bytes = read_file(path("checkpoint.safetensors"));
  }
  broadcast_bytes(*comm_, config_text, 0);
  broadcast_bytes(*comm_, tokenizer_bytes, 0);
  broadcast_bytes(*comm_, checkpoint_bytes, 0);
  together([&] {
    if (!lead()) take_run(config_text, tokenizer_bytes, checkpoint_bytes, corpus);
  });
}

void Trainer::take_run(const std::string& config_text, const std::string& tokenizer_bytes,
                       const std::string& checkpoint_bytes, const Corpus* corpus) {
  const std::string from = " (from rank 0)";
  config_ = parse_run_config(config_text, path("config.json") + from);
  config_hash_ = hex(fnv1a64(config_text));
  check_process_count(config_, comm_->size());  // a resumed run's config: the same on every rank
  check_training_memory(config_, comm_->size());
  tokenizer_ = Tokenizer::from_bytes(tokenizer_bytes, path("tokenizer.model") + from);
  data_ = prepare_task_data(config_.data, corpus ? *corpus : load_corpus(config_.data), tokenizer_);
  build_model();
  if (checkpoint_bytes.empty()) {  // a fresh start
    save_initial_ = true;
    enter_phase(in_pretrain(0));
    return;
  }
  const SafetensorsFile f =
      decode_safetensors(checkpoint_bytes, path("checkpoint.safetensors") + from);
  const CheckpointState s = checkpoint_state(f);
  step_ = s.step;
  enter_phase(in_pretrain(step_));
  const bool same_phase = (s.phase == "pretrain") == optimizer_pretrain_;
  load_checkpoint(f, *model_, same_phase ? optimizer_.get() : nullptr);
}

void Trainer::prepare_directory(bool fresh, const Corpus* loaded) {
  auto note = [&](const std::string& m) {
    if (options_.log) *options_.log << m << "\n";
  };
  // Before any data is read or file written: the config, the memory, the directory, its lock.
  std::string memory;
  if (fresh) memory = check_training_memory(config_, comm_->size());
  std::error_code ec;
  fs::create_directories(run_dir_, ec);
  if (ec) throw IoError("--out '" + run_dir_ + "': cannot create the directory: " + ec.message());
  try {
    lock_ = std::make_unique<FileLock>(path(".lock"));
  } catch (const LockedError& e) {
    throw IoError("--out '" + run_dir_ + "' is in use by another `sparsemoe train`: " + e.what());
  } catch (const IoError& e) {
    throw IoError("--out '" + run_dir_ + "' is not writable: " + e.what());
  }
  if (const int n = remove_stale_temporaries(run_dir_))
    note(fmt::format("removed {} temporary file(s) left by an interrupted write", n));
  const bool has_checkpoint = fs::exists(path("checkpoint.safetensors"));
  if (fresh && has_checkpoint)
    throw InvalidArgument("--out '" + run_dir_ +
                          "' already holds a run (checkpoint.safetensors): continue it with "
                          "--resume, or choose another directory");
  if (!has_checkpoint && fs::exists(path("config.json")))
    note("the run in " + run_dir_ + " stopped before its first checkpoint: starting it again" +
         (fresh ? " with the new config" : " from its config.json"));
  if (!fresh) {
    if (!fs::exists(path("config.json")))
      throw IoError("--resume: '" + run_dir_ + "' holds no run (no config.json)");
    std::string text;
    config_ = read_run_config(path("config.json"), &text);
    config_hash_ = hex(fnv1a64(text));
    check_process_count(config_, comm_->size());
    memory = check_training_memory(config_, comm_->size());
    fresh = !has_checkpoint;
  }
  note(memory);
  Corpus corpus;
  const TaskData* shared = fresh && comm_->size() == 1 ? options_.data : nullptr;
  check_arg(!shared || options_.tokenizer,
            "TrainOptions: data is given without the tokenizer it was prepared with");
  if (shared) {  // only the name and the labels are needed from the corpus
    corpus.name = shared->corpus_name;
    corpus.label_names = shared->label_names;
  } else if (fresh) {
    corpus = loaded ? *loaded : load_corpus(config_.data);
  }
  if (fresh) {
    if (options_.tokenizer) {
      tokenizer_ = *options_.tokenizer;
    } else {
      note("tokenizer: training SentencePiece on " + corpus.name);
      tokenizer_ =
          Tokenizer::train(tokenizer_training_text(config_.data, corpus), config_.tokenizer);
    }
    config_.model.vocab_size = tokenizer_.vocab_size();
    config_.validate();
    // config.json last: with it, a killed run is recognised and started again.
    tokenizer_.save(path("tokenizer.model"));
    write_file_atomic(path("metrics.jsonl"), "");
    write_file_atomic(path("labels.json"), nlohmann::json(corpus.label_names).dump(1) + "\n");
    const std::string text = config_.to_json().dump(2) + "\n";
    write_file_atomic(path("config.json"), text);
    config_hash_ = hex(fnv1a64(text));
  } else {  // config_ and its hash were read above
    tokenizer_ = read_run_tokenizer(path("tokenizer.model"), config_);
    corpus = load_corpus(config_.data);
  }
  data_ = shared ? *shared : prepare_task_data(config_.data, corpus, tokenizer_);
  build_model();
  if (fresh) {
    enter_phase(in_pretrain(0));
    save_initial_ = true;  // by prepare(), once every rank holds the model
    return;
  }
  const CheckpointState s = read_checkpoint_state(path("checkpoint.safetensors"));
  if (s.config_hash != config_hash_)
    throw IoError("'" + path("checkpoint.safetensors") +
                  "' was written for another config.json (hash " + s.config_hash + ", now " +
                  config_hash_ + ")");
  step_ = s.step;
  enter_phase(in_pretrain(step_));
  const bool same_phase = (s.phase == "pretrain") == optimizer_pretrain_;
  load_checkpoint(path("checkpoint.safetensors"), *model_, same_phase ? optimizer_.get() : nullptr);
  // A finished run is left as it is. Otherwise records written after the checkpoint are dropped
  // (the resumed run writes them again), and with them a line torn by a kill, and the test
  // record of a run killed before its results.json.
  if (step_ == config_.total_steps() && fs::exists(path("results.json"))) return;
  std::istringstream in(read_file(path("metrics.jsonl")));
  std::string line, kept;
  while (std::getline(in, line)) {
    const nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (r.is_object() && r.value("step", int64_t{0}) <= step_ && r.value("split", "") != "test")
      kept += line + "\n";
  }
  write_file_atomic(path("metrics.jsonl"), kept);
}

void Trainer::enter_phase(bool pretrain) {
  optimizer_pretrain_ = pretrain;
  const PhaseConfig& phase = pretrain ? config_.pretrain : config_.finetune;
  params_ = pretrain ? model_->pretrain_params() : model_->finetune_params();
  // On several processes the moments are sharded over them (ZeRO-1; adamw.h).
  optimizer_ = std::make_unique<AdamW>(config_.optimizer_for(phase), params_, comm_);
  *window_ = Window();
}

void Trainer::save() {
  // Sharded moments and expert weights come to rank 0 first (collective), which writes the
  // one-process layout.
  std::vector<std::pair<std::string, Tensor>> gathered;
  if (optimizer_->sharded()) gathered = optimizer_->gather_state(0);
  std::vector<Tensor> experts;  // the expert-sharded weights, whole on rank 0
  const std::vector<ParamRef> all = model_->all_params();
  for (const ParamRef& p : all)
    if (p.sharded) experts.push_back(gather_experts(p, *p.value, *comm_, 0));
  if (!lead()) return;
  CheckpointState s;
  s.step = step_;
  s.phase = optimizer_pretrain_ ? "pretrain" : "finetune";
  s.optimizer_step = optimizer_->steps_done();
  s.seed = config_.seed;
  s.config_hash = config_hash_;
  sync_file(path("metrics.jsonl"));  // the records up to this step outlive the checkpoint
  if (!optimizer_->sharded()) {
    save_checkpoint(path("checkpoint.safetensors"), *model_, optimizer_.get(), s);
    return;
  }
  std::vector<std::pair<std::string, const Tensor*>> moments, weights;
  for (const auto& [name, t] : gathered) moments.emplace_back(name, &t);
  size_t e = 0;
  for (const ParamRef& p : all) weights.emplace_back(p.name, p.sharded ? &experts[e++] : p.value);
  save_checkpoint(path("checkpoint.safetensors"), weights, moments, s);
}

void Trainer::write_record(const nlohmann::json& j) {
  // One append per record (a kill can tear only the last line; resume repairs it), made durable
  // before each checkpoint (save()).
  if (!lead()) return;
  append_file(path("metrics.jsonl"), j.dump() + "\n");
  if (options_.on_record) options_.on_record(j);
}

void Trainer::train_step() {
  const bool pre = in_pretrain(step_);
  if (pre != optimizer_pretrain_) enter_phase(pre);
  const int64_t B = config_.batch_size, L = config_.model.max_sequence_length;
  const int64_t phase_step = pre ? step_ : step_ - config_.pretrain.steps;
  const TokenizedSet& set = pre ? data_.pretrain[0] : data_.classify[0];
  const int64_t n = set.size();
  check_arg(n > 0, std::string("no ") + (pre ? "pretraining" : "fine-tuning") + " examples");
  if (order_->pretrain != pre) *order_ = Order{pre, -1, {}};
  std::vector<const std::vector<int>*> rows;
  std::vector<int64_t> labels;
  for (int64_t j = 0; j < B; ++j) {
    const int64_t i = phase_step * B + j, epoch = i / n;
    if (epoch != order_->epoch) {
      order_->perm = fixed_permutation(n, derive_key(config_.seed, kOrder, pre ? 0 : 1, epoch));
      order_->epoch = epoch;
    }
    const int64_t e = order_->perm[i % n];
    rows.push_back(&set.tokens[e]);
    if (!pre) labels.push_back(set.labels[e]);
  }
  Batch& batch = batch_;
  pack_batch(rows, L, batch, labels);
  const uint64_t global = static_cast<uint64_t>(step_) + 1;
  if (pre)  // the whole batch on every rank: the corruption does not depend on the split
    mask_batch(batch, config_.mlm, config_.model.vocab_size,
               derive_key(config_.seed, kTrainMask, global));
  for (const ParamRef& p : params_) p.grad->zero();
  SparseMixer& net = model_->net;
  Tensor& logits = logits_;
  Tensor& dlogits = dlogits_;
  const char* phase = pre ? "pretrain" : "finetune";
  // Units (data_parallel.h): this rank's run one after the other, each from zeroed gradients,
  // with the whole batch's loss normaliser; their sums then go into the tree.
  const int64_t U = config_.units, P = comm_->size(), mine = U / P, Bu = B / U;
  const bool split = U > 1 || P > 1;
  double weight_total = -1;  // one unit: the softmax's own sum, as always
  if (split) {
    weight_total = 0;
    if (pre)
      for (float w : batch.mlm_weights) weight_total += w;
    else
      weight_total = static_cast<double>(B);
  }
  std::vector<double> unit_task;
  std::vector<SparseMixerMetrics> unit_met;
  double task = 0;
  SparseMixerMetrics met;
  for (int64_t j = 0; j < mine; ++j) {
    const int64_t u = comm_->rank() * mine + j;
    const Batch* ub = &batch;
    ForwardOptions opt{.training = true, .step = global};
    if (split) {
      slice_batch(batch, u * Bu, Bu, unit_batch_);
      ub = &unit_batch_;
      opt.token_offset = u * Bu * L;
      opt.sequence_offset = u * Bu;
      opt.global_tokens = B * L;
      opt.units = U;
      if (j > 0)
        for (const ParamRef& p : params_) p.grad->zero();
    }
    met = net.forward({&ub->ids, &ub->mask}, opt);
    if (pre) {
      model_->mlm.forward(net.sequence_output(), ub->positions, net.embeddings().word, logits);
      task = softmax_cross_entropy(logits, ub->mlm_labels, ub->mlm_weights.data(), &dlogits,
                                   nullptr, weight_total);
    } else {
      model_->classifier.forward(net.pooled_output(), logits, opt);
      task = softmax_cross_entropy(logits, ub->labels, nullptr, &dlogits, nullptr, weight_total);
    }
    if (!split && !std::isfinite(task + met.loss)) break;  // reported below, before a backward
    if (pre) {
      dseq_.resize(net.sequence_output().shape());
      dseq_.zero();  // the head adds into it
      model_->mlm.backward(dlogits, net.embeddings().word, dseq_, net.embeddings().word_grad);
      net.backward(&dseq_, nullptr);
    } else {
      model_->classifier.backward(dlogits, dpooled_);
      net.backward(nullptr, &dpooled_);
    }
    if (split) {
      tree_.add_unit(params_);
      unit_task.push_back(task);
      unit_met.push_back(std::move(met));
    }
  }
  if (split) {  // every rank gets the same sums, so all stop together on a non-finite loss
    tree_.finish(params_, *comm_);
    task = sum_over_units(unit_task, *comm_);
    met = combine_unit_metrics(unit_met, U, *comm_);
  }
  if (!std::isfinite(task + met.loss)) {
    throw NonFiniteLoss(fmt::format(
        "training stopped: the loss is not finite at step {} ({}): task loss {}, MoE loss {}; "
        "the last good checkpoint is kept in {}",
        global, phase, task, met.loss, path("checkpoint.safetensors")));
  }
  const double norm = optimizer_->step(params_);
  if (!std::isfinite(norm)) {
    throw NonFiniteLoss(fmt::format(
        "training stopped: the gradient norm is not finite at step {} ({}); the last good "
        "checkpoint is kept in {}",
        global, phase, path("checkpoint.safetensors")));
  }
  ++step_;
  Window& w = *window_;
  ++w.steps;
  w.tokens += B * L;
  w.task += task;
  w.moe += met.loss;
  w.lb += met.load_balancing_loss;
  w.z += met.router_z_loss;
  w.grad_norm = norm;
  w.metrics.add(met);
}

void Trainer::log_window(bool force) {
  Window& w = *window_;
  if (w.steps == 0 || (!force && step_ % config_.log_every != 0)) return;
  const double secs = seconds_since(w.start), k = 1.0 / static_cast<double>(w.steps);
  const bool pre = optimizer_pretrain_;
  const double lr = learning_rate_at(optimizer_->config(), optimizer_->steps_done());
  const double tps = w.tokens / std::max(secs, 1e-9);
  nlohmann::json r = {{"event", "train"},
                      {"phase", pre ? "pretrain" : "finetune"},
                      {"step", step_},
                      {"loss", (w.task + w.moe) * k},
                      {"task_loss", w.task * k},
                      {"aux_loss", config_.model.moe.router.load_balancing_loss_weight * w.lb * k},
                      {"z_loss", w.z * k},
                      {"load_balancing_loss", w.lb * k},
                      {"learning_rate", lr},
                      {"grad_norm", w.grad_norm},
                      {"tokens_per_s", tps},
                      {"seconds", secs},
                      {"moe", w.metrics.mean().to_json()}};
  write_record(r);
  if (options_.log && !options_.live) {
    *options_.log << fmt::format(
        "{} step {}/{} loss {:.4f} (task {:.4f} aux {:.2e} z {:.2e}) "
        "lr {:.2e} {:.0f} tok/s\n",
        pre ? "pretrain" : "finetune", step_, config_.total_steps(), (w.task + w.moe) * k,
        w.task * k, config_.model.moe.router.load_balancing_loss_weight * w.lb * k, w.z * k, lr,
        tps);
    options_.log->flush();
  }
  *window_ = Window();
}

void Trainer::evaluate_dev() {
  // Every rank evaluates the same batches (collective when the experts are split: each runs its
  // own experts and shares their outputs, ForwardOptions::replicated), so every rank computes one
  // process's evaluation; rank 0 writes it.
  const bool pre = optimizer_pretrain_;
  const EvalResult r = pre ? evaluate_mlm(*model_, data_.pretrain[1], config_.batch_size,
                                          config_.mlm, config_.seed, config_.eval_batches)
                           : evaluate_classifier(*model_, data_.classify[1], config_.batch_size,
                                                 config_.eval_batches);
  write_record({{"event", "eval"},
                {"phase", pre ? "pretrain" : "finetune"},
                {"split", "dev"},
                {"step", step_},
                {"loss", r.loss},
                {"accuracy", r.accuracy},
                {"count", r.count},
                {"moe", r.moe.to_json()}});
  if (options_.log) {
    *options_.log << (options_.live ? "\r\033[K" : "")
                  << fmt::format("{} step {} dev: loss {:.4f} {} accuracy {:.4f} ({} {})\n",
                                 pre ? "pretrain" : "finetune", step_, r.loss,
                                 pre ? "masked-token" : "supersense", r.accuracy, r.count,
                                 pre ? "masked tokens" : "examples");
    options_.log->flush();
  }
}

TrainResult Trainer::run() {
  TrainResult result;
  int64_t finished = step_ == config_.total_steps() && lead() && fs::exists(path("results.json"));
  finished = comm_->allreduce_max(finished);  // rank 0 alone reads the directory
  if (finished) {
    result.outcome = TrainOutcome::kAlreadyFinished;
    result.step = step_;
    return result;
  }
  const Clock::time_point start = Clock::now();
  const int64_t total = config_.total_steps(), first = step_;
  const int64_t Np = config_.pretrain.steps;
  Clock::time_point last_live = Clock::now() - std::chrono::seconds(1);
  int64_t saved = step_;
  auto checkpoint = [&] {
    if (saved != step_) save();
    saved = step_;
  };
  while (step_ < total) {
    const Clock::time_point step_start = Clock::now();
    const int phase_index = in_pretrain(step_) ? 0 : 1;
    train_step();
    result.step_seconds[phase_index] += seconds_since(step_start);
    const bool phase_end = step_ == Np || step_ == total;
    log_window(phase_end);
    if ((config_.eval_every > 0 && step_ % config_.eval_every == 0) || phase_end) evaluate_dev();
    result.phase_seconds[phase_index] += seconds_since(step_start);
    if ((config_.checkpoint_every > 0 && step_ % config_.checkpoint_every == 0) || phase_end)
      checkpoint();
    if (options_.log && options_.live && seconds_since(last_live) > 0.25) {
      const double secs = seconds_since(start);
      const double per_step = secs / static_cast<double>(step_ - first);
      const Window& w = *window_;
      *options_.log << fmt::format(
          "\r\033[K{} step {}/{} loss {:.4f} {:.0f} tok/s ETA {}",
          in_pretrain(step_ - 1) ? "pretrain" : "finetune", step_, total,
          w.steps ? (w.task + w.moe) / static_cast<double>(w.steps) : 0.0,
          w.steps ? w.tokens / std::max(seconds_since(w.start), 1e-9) : 0.0,
          duration_str(per_step * static_cast<double>(total - step_)));
      options_.log->flush();
      last_live = Clock::now();
    }
    // A signal may reach some ranks only (or at different steps): they agree to stop together.
    int64_t signalled = options_.stop_signal && options_.stop_signal->load() != 0;
    if (comm_->size() > 1) signalled = comm_->allreduce_max(signalled);
    const bool interrupted = signalled != 0;
    if (interrupted ||
        (options_.stop_after_step > 0 && step_ >= options_.stop_after_step && step_ < total)) {
      log_window(true);
      checkpoint();
      if (lead()) write_report(run_dir_);
      result.outcome = interrupted ? TrainOutcome::kInterrupted : TrainOutcome::kStopped;
      result.step = step_;
      result.seconds = seconds_since(start);
      if (options_.log && options_.live) *options_.log << "\n";
      return result;
    }
  }
  if (options_.log && options_.live) *options_.log << "\r\033[K";
  checkpoint();
  result.step = step_;
  result.seconds = seconds_since(start);
  // Every rank evaluates the test split (collective, as evaluate_dev); rank 0 writes the results.
  result.test = evaluate_classifier(*model_, data_.classify[2], config_.batch_size);
  if (!lead()) return result;
  int64_t majority = 0;
  for (int64_t label : data_.classify[2].labels) majority += label == data_.majority_label;
  result.majority_accuracy =
      data_.classify[2].size() ? majority / static_cast<double>(data_.classify[2].size()) : 0;
  result.seconds = seconds_since(start);
  const int64_t C = static_cast<int64_t>(data_.label_names.size());
  write_record({{"event", "eval"},
                {"phase", "finetune"},
                {"split", "test"},
                {"step", step_},
                {"loss", result.test.loss},
                {"accuracy", result.test.accuracy},
                {"count", result.test.count},
                {"majority_accuracy", result.majority_accuracy},
                {"moe", result.test.moe.to_json()}});
  nlohmann::json results = {{"step", step_},
                            {"test_accuracy", result.test.accuracy},
                            {"test_loss", result.test.loss},
                            {"test_examples", result.test.count},
                            {"majority_class", data_.label_names[data_.majority_label]},
                            {"majority_accuracy", result.majority_accuracy},
                            {"labels", data_.label_names},
                            {"confusion", nlohmann::json::array()}};
  for (int64_t c = 0; c < C; ++c) {
    results["confusion"].push_back(std::vector<int64_t>(
        result.test.confusion.begin() + c * C, result.test.confusion.begin() + (c + 1) * C));
  }
  write_file_atomic(path("results.json"), results.dump(2) + "\n");
  write_report(run_dir_);
  return result;
}

}  // namespace sparsemoe
