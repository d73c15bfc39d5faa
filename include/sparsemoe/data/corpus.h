// Text corpora for training: labelled examples with a deterministic train/dev/test split.
// Readers: WordNet 3.0 glosses labelled by supersense (the default corpus, Debian's
// wordnet-base), `label<TAB>text` files for classification, and plain text (one sentence a line)
// for pretraining. A split is a pure function of a 64-bit key (the synset's part of speech and
// offset, or a hash of the text), so it is identical on every machine and in every run.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sparsemoe {

enum class Split { kTrain = 0, kDev = 1, kTest = 2 };
const char* split_name(Split s);
// "train", "dev" or "test"; otherwise InvalidArgument "<what>: expected train, dev or test, ...".
Split parse_split(const std::string& name, const std::string& what);

// 80 / 10 / 10 by mix64(key) % 10: 0-7 train, 8 dev, 9 test.
Split split_for_key(uint64_t key);
// FNV-1a 64 of the bytes: a platform-independent hash for text keys.
uint64_t fnv1a64(std::string_view bytes);

struct TextExample {
  std::string text;
  int64_t label = -1;  // index into Corpus::label_names; -1 for unlabelled text
  Split split = Split::kTrain;
};

struct Corpus {
  std::string name;                      // where it came from, for reports
  std::vector<std::string> label_names;  // empty for unlabelled text
  std::vector<TextExample> examples;     // in file order

  std::vector<const TextExample*> split(Split s) const;
  std::vector<const TextExample*> labelled(Split s) const;  // split(s) with label >= 0
};

// The 45 lexicographer files of WordNet 3.0 (00 adj.all ... 44 adj.ppl), the supersense labels.
const std::vector<std::string>& wordnet_lexnames();

// Reads data.{noun,verb,adj,adv} under `dir`: one example per synset, text = the gloss,
// label = its lexicographer file number, split by (part of speech, offset). Throws IoError
// naming the file and line of a malformed record, and saying how to install the corpus when the
// files are missing.
Corpus read_wordnet(const std::string& dir = "/usr/share/wordnet");

// `label<TAB>text` lines (empty lines skipped). Labels are the sorted distinct names; examples are
// split by a hash of their text (so duplicates never straddle splits). Throws IoError naming the
// line that has no tab or an empty label or text.
Corpus read_labeled_text(const std::string& path);

// One sentence per line (empty lines skipped), unlabelled, split by a hash of the text.
Corpus read_plain_text(const std::string& path);

// The parsers behind the readers, on text already in memory (`path` names it in errors); the
// fuzzers call these. parse_wordnet_data appends one data.<pos> file's synsets to corpus
// (pos: 0 noun, 1 verb, 2 adj, 3 adv).
void parse_wordnet_data(std::string_view text, const std::string& path, uint64_t pos,
                        Corpus& corpus);
Corpus parse_labeled_text(std::string_view text, const std::string& path);
Corpus parse_plain_text(std::string_view text, const std::string& path);

}  // namespace sparsemoe
