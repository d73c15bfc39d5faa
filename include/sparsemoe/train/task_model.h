// What a run trains and uses: the task data (the corpus read, split and tokenized) and the task
// model (the Sparse Mixer network with its masked-LM head, tied to the word table, and its
// classification head), with batched evaluation and prediction. Shared by the trainer and by
// `sparsemoe eval / predict / inspect`.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sparsemoe/data/batching.h"
#include "sparsemoe/data/corpus.h"
#include "sparsemoe/data/tokenizer.h"
#include "sparsemoe/models/heads.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/train/train_config.h"

namespace sparsemoe {

// A permutation of [0, n) that is a pure function of (n, key): Fisher-Yates with counter-based
// draws. Used for the fixed order within splits and the per-epoch training order.
std::vector<int64_t> fixed_permutation(int64_t n, uint64_t key);

// The configured corpus (WordNet or a label<TAB>text file).
Corpus load_corpus(const DataConfig& data);
// The tokenizer's training text: the classification corpus's training split, plus the
// pretraining text's training split when one is configured.
std::vector<std::string> tokenizer_training_text(const DataConfig& data, const Corpus& corpus);

struct TokenizedSet {
  std::vector<std::vector<int>> tokens;  // one row per example, no special tokens
  std::vector<int64_t> labels;           // one per row for classification; empty for MLM
  std::vector<const std::vector<int>*> rows(int64_t begin, int64_t end) const;
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
};

struct TaskData {
  std::string corpus_name;
  std::vector<std::string> label_names;
  std::array<TokenizedSet, 3> classify;  // by Split: train, dev, test
  std::array<TokenizedSet, 2> pretrain;  // train, dev (unlabelled)
  int64_t majority_label = 0;            // the most frequent training label
};

TaskData prepare_task_data(const DataConfig& data, const Corpus& corpus, const Tokenizer& tok);

class TaskModel {
 public:
  // placement: the MoE layers' experts, all or one process's (ExpertPlacement).
  TaskModel(const TrainConfig& config, int64_t num_classes, ExpertPlacement placement = {});

  // Every parameter: "model/..." (the network), "cls/predictions/..." (the masked-LM head) and
  // "classifier/..." (the checkpoint's names).
  std::vector<ParamRef> all_params();
  std::vector<ParamRef> pretrain_params();  // network + masked-LM head
  std::vector<ParamRef> finetune_params();  // network + classifier
  // Packs the network's and both heads' weights for inference (SparseMixer::prepare_inference);
  // returns the bytes packed.
  int64_t prepare_inference() {
    return net.prepare_inference() + mlm.prepare_inference() + classifier.prepare_inference();
  }

  SparseMixer net;
  MaskedLmHead mlm;
  ClassificationHead classifier;
};

// Averages SparseMixerMetrics over steps or batches: losses and ratios are means, tokens per
// expert are sums.
class MoeMetricsMean {
 public:
  void add(const SparseMixerMetrics& m);
  SparseMixerMetrics mean() const;
  int64_t count() const { return n_; }

 private:
  SparseMixerMetrics sum_;
  int64_t n_ = 0;
};

struct EvalResult {
  double loss = 0;                 // mean cross-entropy per prediction
  double accuracy = 0;             // fraction of predictions whose argmax is the label
  int64_t count = 0;               // predictions made (examples, or masked tokens)
  std::vector<int64_t> confusion;  // [C, C] true x predicted (classification only)
  SparseMixerMetrics moe;          // the MoE metrics, averaged over batches (tokens summed)
};

// Classification of `set` in batches of `batch_size` (the last batch is padded with copies of
// its first row, which are not counted); `max_batches` 0 = all. Both evaluations run the network
// with ForwardOptions::replicated: when its MoE layers are expert-parallel, every rank of their
// communicator must call them together with the same set (each runs its own experts).
EvalResult evaluate_classifier(TaskModel& m, const TokenizedSet& set, int64_t batch_size,
                               int64_t max_batches = 0);
// Masked-LM loss and accuracy on `set`; batch i is masked with key derive_key(seed, kDevMask, i),
// so every evaluation of a run sees the same corruption.
EvalResult evaluate_mlm(TaskModel& m, const TokenizedSet& set, int64_t batch_size,
                        const MlmOptions& mlm, uint64_t seed, int64_t max_batches = 0);
// The part of a text worth tokenizing for a model of max_len tokens: its first
// max(4096, 64 * max_len) bytes, cut on a UTF-8 character boundary (no piece is longer than 64
// bytes, so a longer prefix changes nothing but the memory: an 8 MB line once took 2 GB).
std::string_view predict_prefix(std::string_view text, int64_t max_len);
// Class probabilities [N, C] for token rows.
std::vector<std::vector<float>> predict_probabilities(TaskModel& m,
                                                      const std::vector<std::vector<int>>& rows,
                                                      int64_t batch_size);

}  // namespace sparsemoe
