// Task data, the task model and its evaluation (see task_model.h).
#include "sparsemoe/train/task_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

namespace {
constexpr uint64_t kDevMask = 0x6465766d61736bull;  // "devmask": the dev MLM corruption stream
constexpr uint64_t kMlmHeadSeed = 11, kClassifierSeed = 12;
constexpr uint64_t kSplitOrder = 0x73706c6974ull;  // "split": the fixed order within each split
}  // namespace

std::vector<int64_t> fixed_permutation(int64_t n, uint64_t key) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = std::min<int64_t>(i, static_cast<int64_t>(uniform01(key, i) * (i + 1)));
    std::swap(p[i], p[j]);
  }
  return p;
}

Corpus load_corpus(const DataConfig& data) {
  if (data.format == "wordnet") {
    return read_wordnet(data.path.empty() ? "/usr/share/wordnet" : data.path);
  }
  return read_labeled_text(data.path);
}

std::vector<std::string> tokenizer_training_text(const DataConfig& data, const Corpus& corpus) {
  std::vector<std::string> text;
  for (const TextExample* e : corpus.split(Split::kTrain)) text.push_back(e->text);
  if (!data.pretrain_text.empty()) {
    for (const TextExample* e : read_plain_text(data.pretrain_text).split(Split::kTrain)) {
      text.push_back(e->text);
    }
  }
  return text;
}

std::vector<const std::vector<int>*> TokenizedSet::rows(int64_t begin, int64_t end) const {
  std::vector<const std::vector<int>*> out;
  for (int64_t i = begin; i < end; ++i) out.push_back(&tokens[i]);
  return out;
}

namespace {
// Every example's token ids, in the corpus's order. Examples are encoded independently, so the
// threads share them in fixed chunks: the result does not depend on the thread count (the main
// job's 117,000 WordNet glosses: about 1.5 s on one thread, and every run of --compare-dense
// prepares the data again). skip_test: the test split's examples are left empty.
std::vector<std::vector<int>> encode_all(const Corpus& corpus, const Tokenizer& tok,
                                         bool skip_test) {
  std::vector<std::vector<int>> ids(corpus.examples.size());
  parallel_for_range(static_cast<int64_t>(ids.size()), 512, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const TextExample& e = corpus.examples[i];
      if (!(skip_test && e.split == Split::kTest)) ids[i] = tok.encode(e.text);
    }
  });
  return ids;
}
}  // namespace

TaskData prepare_task_data(const DataConfig& data, const Corpus& corpus, const Tokenizer& tok) {
  TaskData d;
  d.corpus_name = corpus.name;
  d.label_names = corpus.label_names;
  check_arg(!d.label_names.empty(),
            "the classification corpus '" + corpus.name + "' has no labels");
  std::vector<std::vector<int>> ids = encode_all(corpus, tok, false);
  for (size_t i = 0; i < ids.size(); ++i) {
    const TextExample& e = corpus.examples[i];
    TokenizedSet& set = d.classify[static_cast<int>(e.split)];
    set.tokens.push_back(std::move(ids[i]));
    set.labels.push_back(e.label);
  }
  if (data.pretrain_text.empty()) {
    d.pretrain[0].tokens = d.classify[0].tokens;
    d.pretrain[1].tokens = d.classify[1].tokens;
  } else {
    const Corpus text = read_plain_text(data.pretrain_text);
    ids = encode_all(text, tok, true);
    for (size_t i = 0; i < ids.size(); ++i) {
      const Split split = text.examples[i].split;
      if (split == Split::kTest) continue;
      d.pretrain[static_cast<int>(split)].tokens.push_back(std::move(ids[i]));
    }
  }
  for (int s = 0; s < 2; ++s) {
    check_arg(d.classify[s].size() > 0, std::string("the corpus '") + corpus.name + "' has no " +
                                            split_name(static_cast<Split>(s)) + " examples");
  }
  // A fixed shuffle of every split (the same in every run and on every machine), so a dev subset
  // (eval_batches) is a sample of the whole split rather than its first part of speech.
  auto shuffle = [](TokenizedSet& set, uint64_t stream) {
    const std::vector<int64_t> p = fixed_permutation(set.size(), derive_key(kSplitOrder, stream));
    TokenizedSet out;
    for (int64_t i : p) {
      out.tokens.push_back(std::move(set.tokens[i]));
      if (!set.labels.empty()) out.labels.push_back(set.labels[i]);
    }
    set = std::move(out);
  };
  for (int s = 0; s < 3; ++s) shuffle(d.classify[s], s);
  for (int s = 0; s < 2; ++s) shuffle(d.pretrain[s], 3 + s);
  std::vector<int64_t> counts(d.label_names.size(), 0);
  for (int64_t label : d.classify[0].labels) counts[label]++;
  d.majority_label = std::max_element(counts.begin(), counts.end()) - counts.begin();
  return d;
}

TaskModel::TaskModel(const TrainConfig& c, int64_t num_classes, ExpertPlacement placement)
    : net(c.model, placement),
      mlm(c.model.hidden_size,
          c.model.embedding_width > 0 ? c.model.embedding_width : c.model.hidden_size,
          c.model.vocab_size, parse_activation(c.model.inner_activation), c.model.initializer_range,
          derive_key(c.model.seed, kMlmHeadSeed)),
      classifier(c.model.hidden_size, num_classes, c.classifier_dropout, c.model.initializer_range,
                 derive_key(c.model.seed, kClassifierSeed)) {}

std::vector<ParamRef> TaskModel::all_params() {
  std::vector<ParamRef> out = prefixed("model", net.params());
  for (auto& p : mlm.params()) out.push_back(p);         // "cls/predictions/..."
  for (auto& p : classifier.params()) out.push_back(p);  // "classifier/..."
  return out;
}

std::vector<ParamRef> TaskModel::pretrain_params() {
  std::vector<ParamRef> out = net.params();
  for (auto& p : mlm.params()) out.push_back(p);
  return out;
}

std::vector<ParamRef> TaskModel::finetune_params() {
  std::vector<ParamRef> out = net.params();
  for (auto& p : classifier.params()) out.push_back(p);
  return out;
}

void MoeMetricsMean::add(const SparseMixerMetrics& m) {
  auto add_layer = [](MoeMetrics& a, const MoeMetrics& b) {
    add_common_moe_metrics(a, b);
    a.over_capacity_1_ratio += b.over_capacity_1_ratio;
    a.over_capacity_2_ratio += b.over_capacity_2_ratio;
    a.tokens_per_expert.resize(b.tokens_per_expert.size(), 0);
    for (size_t e = 0; e < b.tokens_per_expert.size(); ++e)
      a.tokens_per_expert[e] += b.tokens_per_expert[e];
    a.num_groups = b.num_groups;
    a.tokens_per_group = b.tokens_per_group;
    a.expert_capacity = b.expert_capacity;
  };
  if (n_ == 0) {
    sum_ = SparseMixerMetrics();
    sum_.moe_layer_index = m.moe_layer_index;
    sum_.per_layer.resize(m.per_layer.size());
  }
  ++n_;
  for (size_t l = 0; l < m.per_layer.size() && l < sum_.per_layer.size(); ++l)
    add_layer(sum_.per_layer[l], m.per_layer[l]);
  add_common_moe_metrics(sum_, m);
}

SparseMixerMetrics MoeMetricsMean::mean() const {
  SparseMixerMetrics m = sum_;
  if (n_ == 0) return m;
  const double k = 1.0 / static_cast<double>(n_);
  for (MoeMetrics& l : m.per_layer) {
    for (double* v : {&l.load_balancing_loss, &l.router_z_loss, &l.unscaled_router_z_loss,
                      &l.fraction_tokens_left_behind, &l.router_confidence, &l.expert_usage,
                      &l.over_capacity_1_ratio, &l.over_capacity_2_ratio, &l.loss})
      *v *= k;
  }
  for (double* v : {&m.load_balancing_loss, &m.router_z_loss, &m.unscaled_router_z_loss,
                    &m.fraction_tokens_left_behind, &m.router_confidence, &m.expert_usage, &m.loss})
    *v *= k;
  return m;
}

namespace {

// Rows [begin, begin + B) of `set`, the missing tail filled with copies of row `begin` (weight
// 0), packed at the model's length.
int64_t pack_eval_batch(const TokenizedSet& set, int64_t begin, int64_t B, int64_t L,
                        Batch& batch) {
  const int64_t real = std::min(B, set.size() - begin);
  std::vector<const std::vector<int>*> rows = set.rows(begin, begin + real);
  std::vector<int64_t> labels;
  if (!set.labels.empty())
    labels.assign(set.labels.begin() + begin, set.labels.begin() + begin + real);
  while (static_cast<int64_t>(rows.size()) < B) {
    rows.push_back(rows.front());
    if (!labels.empty()) labels.push_back(labels.front());
  }
  pack_batch(rows, L, batch, labels);
  return real;
}

int64_t num_batches(const TokenizedSet& set, int64_t B, int64_t max_batches) {
  const int64_t n = (set.size() + B - 1) / B;
  return max_batches > 0 ? std::min(n, max_batches) : n;
}

}  // namespace

EvalResult evaluate_classifier(TaskModel& m, const TokenizedSet& set, int64_t B,
                               int64_t max_batches) {
  check_arg(!set.labels.empty() || set.size() == 0, "evaluate_classifier: the set has no labels");
  const int64_t L = m.net.config().max_sequence_length, C = m.classifier.num_classes();
  EvalResult r;
  r.confusion.assign(C * C, 0);
  MoeMetricsMean moe;
  Batch batch;
  Tensor logits;
  double loss_sum = 0, correct_sum = 0;
  for (int64_t i = 0, n = num_batches(set, B, max_batches); i < n; ++i) {
    const int64_t real = pack_eval_batch(set, i * B, B, L, batch);
    moe.add(m.net.forward({&batch.ids, &batch.mask},
                          {.training = false, .replicated = true, .save_for_backward = false}));
    m.classifier.forward(m.net.pooled_output(), logits,
                         {.training = false, .save_for_backward = false});
    std::vector<float> w(B, 0.0f);
    std::fill(w.begin(), w.begin() + real, 1.0f);
    double correct = 0;
    loss_sum += softmax_cross_entropy(logits, batch.labels, w.data(), nullptr, &correct) * real;
    correct_sum += correct;
    for (int64_t b = 0; b < real; ++b) {
      const float* row = logits.data() + b * C;
      const int64_t pred = std::max_element(row, row + C) - row;
      r.confusion[batch.labels[b] * C + pred]++;
    }
    r.count += real;
  }
  if (r.count > 0) {
    r.loss = loss_sum / r.count;
    r.accuracy = correct_sum / r.count;
  }
  r.moe = moe.mean();
  return r;
}

EvalResult evaluate_mlm(TaskModel& m, const TokenizedSet& set, int64_t B, const MlmOptions& mlm,
                        uint64_t seed, int64_t max_batches) {
  const int64_t L = m.net.config().max_sequence_length, V = m.net.config().vocab_size;
  EvalResult r;
  MoeMetricsMean moe;
  Batch batch;
  Tensor logits;
  double loss_sum = 0, correct_sum = 0, weight_sum = 0;
  for (int64_t i = 0, n = num_batches(set, B, max_batches); i < n; ++i) {
    const int64_t real = pack_eval_batch(set, i * B, B, L, batch);
    mask_batch(batch, mlm, V, derive_key(seed, kDevMask, i));
    const int64_t P = batch.positions.dim(1);
    std::fill(batch.mlm_weights.begin() + real * P, batch.mlm_weights.end(), 0.0f);
    moe.add(m.net.forward({&batch.ids, &batch.mask},
                          {.training = false, .replicated = true, .save_for_backward = false}));
    m.mlm.forward(m.net.sequence_output(), batch.positions, m.net.embeddings().word, logits);
    double w = 0, correct = 0;
    for (float x : batch.mlm_weights) w += x;
    const double loss = softmax_cross_entropy(logits, batch.mlm_labels, batch.mlm_weights.data(),
                                              nullptr, &correct);
    loss_sum += loss * w;
    correct_sum += correct;
    weight_sum += w;
  }
  r.count = static_cast<int64_t>(weight_sum);
  if (weight_sum > 0) {
    r.loss = loss_sum / weight_sum;
    r.accuracy = correct_sum / weight_sum;
  }
  r.moe = moe.mean();
  return r;
}

std::vector<std::vector<float>> predict_probabilities(TaskModel& m,
                                                      const std::vector<std::vector<int>>& rows,
                                                      int64_t B) {
  TokenizedSet set;
  set.tokens = rows;
  const int64_t L = m.net.config().max_sequence_length, C = m.classifier.num_classes();
  std::vector<std::vector<float>> out;
  Batch batch;
  Tensor logits;
  for (int64_t i = 0, n = num_batches(set, B, 0); i < n; ++i) {
    const int64_t real = pack_eval_batch(set, i * B, B, L, batch);
    m.net.forward({&batch.ids, &batch.mask}, {.training = false, .save_for_backward = false});
    m.classifier.forward(m.net.pooled_output(), logits,
                         {.training = false, .save_for_backward = false});
    for (int64_t b = 0; b < real; ++b) {
      const float* z = logits.data() + b * C;
      const float mx = *std::max_element(z, z + C);
      std::vector<float> p(C);
      double sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += p[c] = std::exp(z[c] - mx);
      for (float& x : p) x = static_cast<float>(x / sum);
      out.push_back(std::move(p));
    }
  }
  return out;
}

std::string_view predict_prefix(std::string_view text, int64_t max_len) {
  const size_t limit = static_cast<size_t>(std::max<int64_t>(4096, 64 * max_len));
  if (text.size() <= limit) return text;
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut);
}

}  // namespace sparsemoe
