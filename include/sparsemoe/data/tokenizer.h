// The tokenizer: a SentencePiece model (unigram by default) trained on the training split and
// saved with the model as SentencePiece's own serialized proto, so other tools can read it too.
// Special ids are fixed: 0 [PAD], 1 <unk>, 2 [CLS], 3 [SEP], 4 [MASK]. Training is single-
// threaded over all sentences (no sampling), so the same sentences give the same model bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sparsemoe/core/config_io.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace sparsemoe {

struct TokenizerOptions {
  int64_t vocab_size = 4000;
  std::string model_type = "unigram";  // or "bpe"

  template <class V>
  void fields(V& v) {
    v("vocab_size", vocab_size, "SentencePiece vocabulary, the 5 special tokens included",
      at_least(7));  // Tokenizer::kNumSpecial + 2
    v("model_type", model_type, "SentencePiece model", one_of({"unigram", "bpe"}));
  }
};

class Tokenizer {
 public:
  static constexpr int kPad = 0, kUnk = 1, kCls = 2, kSep = 3, kMask = 4;
  static constexpr int kNumSpecial = 5;  // ids below this are never random MLM replacements

  // Trains on `sentences` (at least one). Throws InvalidArgument naming a bad option and IoError
  // when SentencePiece refuses the data.
  static Tokenizer train(const std::vector<std::string>& sentences, const TokenizerOptions& opt);
  // A serialized model; `where` names the source in errors. Checks the special ids above.
  static Tokenizer from_bytes(const std::string& model, const std::string& where);
  static Tokenizer load(const std::string& path);
  void save(const std::string& path) const;  // atomic
  std::string bytes() const;

  std::vector<int> encode(std::string_view text) const;
  std::vector<std::string> pieces(std::string_view text) const;
  std::string decode(const std::vector<int>& ids) const;
  int64_t vocab_size() const;
  std::string piece(int id) const;

 private:
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace sparsemoe
