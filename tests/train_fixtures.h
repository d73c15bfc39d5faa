// Shared fixtures of the training tests: a small synthetic label<TAB>text corpus whose labels are
// learnable from their words, and a tiny training config over it.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "sparsemoe/core/rng.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/train/train_config.h"

namespace sparsemoe::test {

// `lines` sentences of 4-9 words: each draws words from its label's list and a shared filler
// list, so the label can be learnt from the text.
inline std::string synthetic_corpus(int lines) {
  const char* words[3][6] = {{"lion", "tiger", "wolf", "eagle", "shark", "horse"},
                             {"hammer", "saw", "drill", "wrench", "chisel", "pliers"},
                             {"bread", "apple", "cheese", "soup", "rice", "honey"}};
  const char* filler[6] = {"the", "a", "big", "small", "old", "with"};
  const char* labels[3] = {"animal", "tool", "food"};
  std::string text;
  for (int i = 0; i < lines; ++i) {
    const int label = static_cast<int>(uniform01(7, i) * 3);
    text += labels[label];
    text += '\t';
    const int n = 4 + static_cast<int>(uniform01(8, i) * 6);
    for (int w = 0; w < n; ++w) {
      const bool own = uniform01(9, i * 16 + w) < 0.5;
      const int k = static_cast<int>(uniform01(10, i * 16 + w) * 6);
      if (w) text += ' ';
      text += own ? words[label][k] : filler[k];
    }
    text += '\n';
  }
  return text;
}

// A tiny model and short phases on the synthetic corpus (written under `dir`).
inline TrainConfig tiny_train_config(const std::string& dir, int64_t pretrain_steps = 6,
                                     int64_t finetune_steps = 6) {
  const std::string corpus = dir + "/corpus.tsv";
  write_file_atomic(corpus, synthetic_corpus(300));
  nlohmann::json j = {
      {"model",
       {{"hidden_size", 16},
        {"num_layers", 3},
        {"moe_layers", {1}},
        {"attention_layers", {2}},
        {"moe",
         {{"experts", {{"num_experts", 4}}},
          {"router",
           {{"type", "tokens_choose"},
            {"num_selected_experts", 2},
            {"load_balancing_loss_weight", 0.01},
            {"router_z_loss_weight", 1e-4}}}}},
        {"num_attention_heads", 2},
        {"max_sequence_length", 12},
        {"type_vocab_size", 2},
        {"inner_dim", 32}}},
      {"data", {{"format", "tsv"}, {"path", corpus}}},
      {"tokenizer", {{"vocab_size", 60}}},
      {"batch_size", 8},
      {"pretrain",
       {{"steps", pretrain_steps}, {"optimizer", {{"learning_rate", 3e-3}, {"warmup_steps", 2}}}}},
      {"finetune",
       {{"steps", finetune_steps}, {"optimizer", {{"learning_rate", 3e-3}, {"warmup_steps", 2}}}}},
      {"log_every", 2},
      {"eval_every", 4},
      {"eval_batches", 2},
      {"checkpoint_every", 4},
      {"seed", 5}};
  return TrainConfig::from_json(j);
}

}  // namespace sparsemoe::test
