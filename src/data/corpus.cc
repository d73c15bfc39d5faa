// Corpus readers and the deterministic split (see corpus.h).
#include "sparsemoe/data/corpus.h"

#include <algorithm>
#include <filesystem>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/io/file_io.h"

namespace sparsemoe {

const char* split_name(Split s) {
  switch (s) {
    case Split::kTrain:
      return "train";
    case Split::kDev:
      return "dev";
    case Split::kTest:
      return "test";
  }
  return "?";
}

Split parse_split(const std::string& name, const std::string& what) {
  for (Split s : {Split::kTrain, Split::kDev, Split::kTest})
    if (name == split_name(s)) return s;
  throw InvalidArgument(what + ": expected train, dev or test, got '" + name + "'");
}

Split split_for_key(uint64_t key) {
  const uint64_t bucket = mix64(key) % 10;
  return bucket < 8 ? Split::kTrain : (bucket == 8 ? Split::kDev : Split::kTest);
}

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::vector<const TextExample*> Corpus::split(Split s) const {
  std::vector<const TextExample*> out;
  for (const TextExample& e : examples) {
    if (e.split == s) out.push_back(&e);
  }
  return out;
}

std::vector<const TextExample*> Corpus::labelled(Split s) const {
  std::vector<const TextExample*> out;
  for (const TextExample& e : examples) {
    if (e.split == s && e.label >= 0) out.push_back(&e);
  }
  return out;
}

const std::vector<std::string>& wordnet_lexnames() {
  static const std::vector<std::string> names = {
      "adj.all",          "adj.pert",           "adv.all",
      "noun.Tops",        "noun.act",           "noun.animal",
      "noun.artifact",    "noun.attribute",     "noun.body",
      "noun.cognition",   "noun.communication", "noun.event",
      "noun.feeling",     "noun.food",          "noun.group",
      "noun.location",    "noun.motive",        "noun.object",
      "noun.person",      "noun.phenomenon",    "noun.plant",
      "noun.possession",  "noun.process",       "noun.quantity",
      "noun.relation",    "noun.shape",         "noun.state",
      "noun.substance",   "noun.time",          "verb.body",
      "verb.change",      "verb.cognition",     "verb.communication",
      "verb.competition", "verb.consumption",   "verb.contact",
      "verb.creation",    "verb.emotion",       "verb.motion",
      "verb.perception",  "verb.possession",    "verb.social",
      "verb.stative",     "verb.weather",       "adj.ppl"};
  return names;
}

namespace {

// Calls f(line, line_number) for each line of `text` (without its newline; a final \r is kept).
template <typename F>
void for_each_line(std::string_view text, F&& f) {
  int64_t number = 0;
  while (!text.empty()) {
    const size_t end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    f(line, ++number);
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\r' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

[[noreturn]] void bad_line(const std::string& path, int64_t line, const std::string& why) {
  throw IoError(path + ":" + std::to_string(line) + ": " + why);
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// One data.<pos> file: "offset lex_filenum ss_type w_cnt words... | gloss". Lines that start
// with spaces are the licence header.
}  // namespace

void parse_wordnet_data(std::string_view text, const std::string& path, uint64_t pos,
                        Corpus& corpus) {
  const int64_t num_labels = static_cast<int64_t>(wordnet_lexnames().size());
  for_each_line(text, [&](std::string_view line, int64_t number) {
    if (line.empty() || line.front() == ' ') return;
    const size_t bar = line.find(" | ");
    if (bar == std::string_view::npos) bad_line(path, number, "no ' | ' before the gloss");
    const std::string_view head = line.substr(0, bar);
    const std::string_view gloss = trim(line.substr(bar + 3));
    const size_t s1 = head.find(' ');
    const size_t s2 = s1 == std::string_view::npos ? s1 : head.find(' ', s1 + 1);
    if (s2 == std::string_view::npos) bad_line(path, number, "expected 'offset lex_filenum ...'");
    const std::string_view offset = head.substr(0, s1);
    const std::string_view lexfile = head.substr(s1 + 1, s2 - s1 - 1);
    if (!all_digits(offset) || offset.size() != 8) {
      bad_line(path, number,
               "the synset offset must be 8 digits, got '" + std::string(offset) + "'");
    }
    const int64_t label =
        all_digits(lexfile) && lexfile.size() == 2 ? std::stoll(std::string(lexfile)) : -1;
    if (lexfile.size() != 2 || label < 0 || label >= num_labels) {
      bad_line(path, number,
               "the lexicographer file number must be 00..44, got '" + std::string(lexfile) + "'");
    }
    if (gloss.empty()) bad_line(path, number, "empty gloss");
    const uint64_t key = std::stoull(std::string(offset)) * 4 + pos;
    corpus.examples.push_back({std::string(gloss), label, split_for_key(key)});
  });
}

Corpus read_wordnet(const std::string& dir) {
  Corpus corpus;
  corpus.name = "wordnet:" + dir;
  corpus.label_names = wordnet_lexnames();
  const char* files[] = {"data.noun", "data.verb", "data.adj", "data.adv"};
  for (uint64_t pos = 0; pos < 4; ++pos) {
    const std::string path = (std::filesystem::path(dir) / files[pos]).string();
    if (!std::filesystem::exists(path)) {
      throw IoError("WordNet corpus not found: '" + path +
                    "' does not exist. Install it with `apt-get install wordnet-base` (or run "
                    "scripts/setup.sh), or point data.path at a WordNet 3.0 dict directory");
    }
    parse_wordnet_data(read_file(path), path, pos, corpus);
  }
  return corpus;
}

Corpus read_labeled_text(const std::string& path) {
  return parse_labeled_text(read_file(path), path);
}

Corpus parse_labeled_text(std::string_view text, const std::string& path) {
  std::vector<std::pair<std::string, std::string>> rows;  // (label, text)
  for_each_line(text, [&](std::string_view line, int64_t number) {
    if (trim(line).empty()) return;
    const size_t tab = line.find('\t');
    if (tab == std::string_view::npos) bad_line(path, number, "expected 'label<TAB>text'");
    const std::string_view label = trim(line.substr(0, tab));
    const std::string_view body = trim(line.substr(tab + 1));
    if (label.empty()) bad_line(path, number, "empty label before the tab");
    if (body.empty()) bad_line(path, number, "empty text after the tab");
    rows.emplace_back(std::string(label), std::string(body));
  });
  if (rows.empty()) throw IoError("'" + path + "' has no 'label<TAB>text' lines");
  Corpus corpus;
  corpus.name = path;
  for (const auto& r : rows) corpus.label_names.push_back(r.first);
  std::sort(corpus.label_names.begin(), corpus.label_names.end());
  corpus.label_names.erase(std::unique(corpus.label_names.begin(), corpus.label_names.end()),
                           corpus.label_names.end());
  for (auto& [label, body] : rows) {
    const auto it = std::lower_bound(corpus.label_names.begin(), corpus.label_names.end(), label);
    const int64_t index = it - corpus.label_names.begin();
    const Split split = split_for_key(fnv1a64(body));
    corpus.examples.push_back({std::move(body), index, split});
  }
  return corpus;
}

Corpus read_plain_text(const std::string& path) { return parse_plain_text(read_file(path), path); }

Corpus parse_plain_text(std::string_view text, const std::string& path) {
  Corpus corpus;
  corpus.name = path;
  for_each_line(text, [&](std::string_view line, int64_t) {
    const std::string_view body = trim(line);
    if (body.empty()) return;
    corpus.examples.push_back({std::string(body), -1, split_for_key(fnv1a64(body))});
  });
  if (corpus.examples.empty()) throw IoError("'" + path + "' has no non-empty lines");
  return corpus;
}

}  // namespace sparsemoe
