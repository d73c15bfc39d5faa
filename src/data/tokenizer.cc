// SentencePiece behind the Tokenizer interface (see tokenizer.h).
#include "sparsemoe/data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <unordered_map>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/io/file_io.h"

namespace sparsemoe {

namespace {

// Feeds the sentences to the trainer without a temporary file.
class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& s) : s_(s) {}
  bool done() const override { return i_ >= s_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return s_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& s_;
  size_t i_ = 0;
};

}  // namespace

Tokenizer Tokenizer::train(const std::vector<std::string>& sentences, const TokenizerOptions& opt) {
  check_arg(!sentences.empty(), "Tokenizer::train: no sentences to train on");
  check_arg(opt.vocab_size > kNumSpecial + 1, "tokenizer vocab_size must be > " +
                                                  std::to_string(kNumSpecial + 1) + ", got " +
                                                  std::to_string(opt.vocab_size));
  check_arg(opt.model_type == "unigram" || opt.model_type == "bpe",
            "tokenizer model_type must be 'unigram' or 'bpe', got '" + opt.model_type + "'");
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"pad_id", "0"},
      {"unk_id", "1"},
      {"bos_id", "2"},
      {"eos_id", "3"},
      {"pad_piece", "[PAD]"},
      {"bos_piece", "[CLS]"},
      {"eos_piece", "[SEP]"},
      {"user_defined_symbols", "[MASK]"},
      // A fixed number of threads, whatever the machine: the trainer splits the sentences
      // among them and sums their counts in thread order, so the model depends on the count
      // (1, 2 and 4 give three different ones) but not on the machine or the run. Two halve the
      // EM passes on two cores: the main job's tokenizer 29 -> 20 s on a Xeon (Emerald Rapids).
      {"num_threads", "2"},
      {"input_sentence_size", "0"},  // every sentence, no sampling
      {"shuffle_input_sentence", "false"},
      {"hard_vocab_limit", "false"},  // small corpora get a smaller vocabulary, not an error
      {"character_coverage", "1.0"},  // every character seen in training is kept
      {"minloglevel", "2"},
  };
  VectorIterator it(sentences);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  if (!status.ok()) throw IoError("SentencePiece training failed: " + status.ToString());
  return from_bytes(model, "the trained tokenizer");
}

Tokenizer Tokenizer::from_bytes(const std::string& model, const std::string& where) {
  Tokenizer t;
  t.sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto status = t.sp_->LoadFromSerializedProto(model);
  if (!status.ok()) {
    throw IoError("cannot read the tokenizer " + where + ": " + status.ToString());
  }
  const char* expected[kNumSpecial] = {"[PAD]", "<unk>", "[CLS]", "[SEP]", "[MASK]"};
  for (int id = 0; id < kNumSpecial; ++id) {
    if (id >= t.sp_->GetPieceSize() || t.sp_->IdToPiece(id) != expected[id]) {
      throw IoError("the tokenizer " + where + " is not a sparsemoe tokenizer: id " +
                    std::to_string(id) + " must be " + expected[id]);
    }
  }
  return t;
}

Tokenizer Tokenizer::load(const std::string& path) { return from_bytes(read_file(path), path); }

void Tokenizer::save(const std::string& path) const { write_file_atomic(path, bytes()); }

std::string Tokenizer::bytes() const { return sp_->serialized_model_proto(); }

std::vector<int> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw InvalidArgument("tokenizer: cannot encode text: " + status.ToString());
  return ids;
}

std::vector<std::string> Tokenizer::pieces(std::string_view text) const {
  std::vector<std::string> out;
  const auto status = sp_->Encode(text, &out);
  if (!status.ok()) throw InvalidArgument("tokenizer: cannot encode text: " + status.ToString());
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (const int id : ids) {
    check_arg(id >= 0 && id < sp_->GetPieceSize(), "tokenizer: id " + std::to_string(id) +
                                                       " is outside [0, " +
                                                       std::to_string(sp_->GetPieceSize()) + ")");
  }
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  if (!status.ok()) throw InvalidArgument("tokenizer: cannot decode: " + status.ToString());
  return text;
}

int64_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::string Tokenizer::piece(int id) const {
  check_arg(id >= 0 && id < sp_->GetPieceSize(),
            "tokenizer: id " + std::to_string(id) + " is outside the vocabulary");
  return sp_->IdToPiece(id);
}

}  // namespace sparsemoe
