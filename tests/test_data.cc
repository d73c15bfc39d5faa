// The data pipeline: the WordNet reader on a sample of the real files, the split's determinism
// and proportions, the label<TAB>text and plain-text readers and their errors, the SentencePiece
// tokenizer (round trip, special ids, deterministic training, save/load, corrupt files), batch
// packing and the MLM masking statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/data/batching.h"
#include "sparsemoe/data/corpus.h"
#include "sparsemoe/data/tokenizer.h"
#include "sparsemoe/io/file_io.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

const std::string kData = SPARSEMOE_TEST_DATA_DIR;

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = testing::TempDir() + "/" + name;
  write_file_atomic(path, text);
  return path;
}

using test::error_of;

TEST(Split, HashesAreFixedAndProportionsAre80_10_10) {
  // FNV-1a 64 reference values (the published test vectors).
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
  int64_t counts[3] = {0, 0, 0};
  const int64_t n = 200000;
  for (int64_t k = 0; k < n; ++k) counts[static_cast<int>(split_for_key(k))]++;
  EXPECT_NEAR(counts[0] / double(n), 0.8, 0.005);
  EXPECT_NEAR(counts[1] / double(n), 0.1, 0.005);
  EXPECT_NEAR(counts[2] / double(n), 0.1, 0.005);
}

TEST(WordNet, ReadsTheSampleRecords) {
  const Corpus c = read_wordnet(kData + "/wordnet");
  ASSERT_EQ(c.label_names.size(), 45u);
  EXPECT_EQ(c.label_names[3], "noun.Tops");
  EXPECT_EQ(c.label_names[6], "noun.artifact");
  EXPECT_EQ(c.label_names[44], "adj.ppl");
  // 12 records from each of noun, verb, adj and 4 from adv (29 licence lines skipped).
  ASSERT_EQ(c.examples.size(), 40u);
  const TextExample& entity = c.examples[0];
  EXPECT_EQ(entity.text,
            "that which is perceived or known or inferred to have its own distinct existence "
            "(living or nonliving)");
  EXPECT_EQ(c.label_names[entity.label], "noun.Tops");
  // The first verb record has pointers and frames before its gloss.
  const TextExample& breathe = c.examples[12];
  EXPECT_EQ(c.label_names[breathe.label], "verb.body");
  EXPECT_EQ(breathe.text.rfind("draw air into, and expel out of, the lungs", 0), 0u)
      << breathe.text;
  EXPECT_EQ(c.label_names[c.examples[24].label], "adj.all");
  EXPECT_EQ(c.label_names[c.examples[36].label], "adv.all");
  for (const TextExample& e : c.examples) {
    EXPECT_FALSE(e.text.empty());
    EXPECT_NE(e.text.back(), ' ');
  }
}

TEST(WordNet, SplitIsDeterministicAndKeyedBySynset) {
  const Corpus a = read_wordnet(kData + "/wordnet"), b = read_wordnet(kData + "/wordnet");
  ASSERT_EQ(a.examples.size(), b.examples.size());
  for (size_t i = 0; i < a.examples.size(); ++i)
    EXPECT_EQ(a.examples[i].split, b.examples[i].split);
  // The split is a function of (part of speech, offset): the first noun record is synset
  // 00001740 n, key 1740 * 4 + 0; the first verb one has the same offset but key 1740 * 4 + 1.
  EXPECT_EQ(a.examples[0].split, split_for_key(1740 * 4 + 0));
  EXPECT_EQ(a.examples[12].split, split_for_key(1740 * 4 + 1));
  size_t total = 0;
  for (Split s : {Split::kTrain, Split::kDev, Split::kTest}) total += a.split(s).size();
  EXPECT_EQ(total, a.examples.size());
}

TEST(WordNet, MissingCorpusSaysHowToInstallIt) {
  const std::string e = error_of([] { read_wordnet(testing::TempDir() + "/no_wordnet_here"); });
  EXPECT_NE(e.find("WordNet corpus not found"), std::string::npos) << e;
  EXPECT_NE(e.find("apt-get install wordnet-base"), std::string::npos) << e;
}

TEST(WordNet, MalformedRecordsNameTheFileAndLine) {
  const std::string dir = testing::TempDir() + "/wordnet_bad";
  std::filesystem::create_directories(dir);
  const std::string good = "00001740 03 n 01 entity 0 000 | a thing  \n";
  for (const char* f : {"data.verb", "data.adj", "data.adv"})
    write_file_atomic(dir + "/" + f, good);
  const auto error_for = [&](const std::string& noun) {
    write_file_atomic(dir + "/data.noun", "  1 licence line\n" + good + noun);
    return error_of([&] { read_wordnet(dir); });
  };
  EXPECT_EQ(error_for(""), "no error");
  std::string e = error_for("00001741 03 n 01 thing 0 000 no gloss\n");
  EXPECT_NE(e.find("data.noun:3: no ' | ' before the gloss"), std::string::npos) << e;
  e = error_for("00001741 45 n 01 thing 0 000 | gloss\n");
  EXPECT_NE(e.find("data.noun:3: the lexicographer file number must be 00..44, got '45'"),
            std::string::npos)
      << e;
  e = error_for("00001741 99999999999999999999 n 01 thing 0 000 | gloss\n");  // once "stoll"
  EXPECT_NE(e.find("data.noun:3: the lexicographer file number must be 00..44, got '9999"),
            std::string::npos)
      << e;
  e = error_for("1741 03 n 01 thing 0 000 | gloss\n");
  EXPECT_NE(e.find("the synset offset must be 8 digits, got '1741'"), std::string::npos) << e;
  e = error_for("00001741 03 n 01 thing 0 000 |    \n");
  EXPECT_NE(e.find("data.noun:3: empty gloss"), std::string::npos) << e;
}

TEST(LabeledText, SortedLabelsAndHashSplit) {
  const Corpus c = read_labeled_text(kData + "/labels.tsv");
  EXPECT_EQ(c.label_names, (std::vector<std::string>{"animal", "food", "tool"}));
  ASSERT_EQ(c.examples.size(), 10u);  // the empty line is skipped
  EXPECT_EQ(c.examples[0].label, 0);
  EXPECT_EQ(c.examples[3].label, 2);
  EXPECT_EQ(c.examples[6].text, "a baked loaf made from flour water and yeast");
  EXPECT_EQ(c.examples[6].label, 1);
  // A duplicated line lands in the same split as its twin.
  EXPECT_EQ(c.examples[1].text, c.examples[9].text);
  EXPECT_EQ(c.examples[1].split, c.examples[9].split);
  EXPECT_EQ(c.examples[0].split, split_for_key(fnv1a64(c.examples[0].text)));
}

TEST(LabeledText, BadLinesAndFilesAreClearErrors) {
  std::string e = error_of([] { read_labeled_text(write_temp("l1.tsv", "a\tok\nno tab here\n")); });
  EXPECT_NE(e.find("l1.tsv:2: expected 'label<TAB>text'"), std::string::npos) << e;
  e = error_of([] { read_labeled_text(write_temp("l2.tsv", "\ttext\n")); });
  EXPECT_NE(e.find("l2.tsv:1: empty label before the tab"), std::string::npos) << e;
  e = error_of([] { read_labeled_text(write_temp("l3.tsv", "x\t  \n")); });
  EXPECT_NE(e.find("l3.tsv:1: empty text after the tab"), std::string::npos) << e;
  e = error_of([] { read_labeled_text(write_temp("l4.tsv", "\n\n")); });
  EXPECT_NE(e.find("has no 'label<TAB>text' lines"), std::string::npos) << e;
  EXPECT_THROW(read_labeled_text(testing::TempDir() + "/missing.tsv"), IoError);
}

TEST(PlainText, OneUnlabelledExampleALine) {
  const Corpus c = read_plain_text(kData + "/sentences.txt");
  ASSERT_EQ(c.examples.size(), 4u);
  EXPECT_EQ(c.examples[2].text, "birds sing in the morning");
  EXPECT_EQ(c.examples[2].label, -1);
  EXPECT_TRUE(c.label_names.empty());
  EXPECT_NE(error_of([] { read_plain_text(write_temp("empty.txt", " \n")); }).find("no non-empty"),
            std::string::npos);
}

std::vector<std::string> sample_sentences() {
  std::vector<std::string> s;
  for (const TextExample& e : read_wordnet(kData + "/wordnet").examples) s.push_back(e.text);
  return s;
}

TEST(Tokenizer, RoundTripsTextAndFixesTheSpecialIds) {
  const std::vector<std::string> s = sample_sentences();
  const Tokenizer t = Tokenizer::train(s, {.vocab_size = 300});
  EXPECT_GT(t.vocab_size(), Tokenizer::kNumSpecial);
  EXPECT_LE(t.vocab_size(), 300);
  EXPECT_EQ(t.piece(Tokenizer::kPad), "[PAD]");
  EXPECT_EQ(t.piece(Tokenizer::kUnk), "<unk>");
  EXPECT_EQ(t.piece(Tokenizer::kCls), "[CLS]");
  EXPECT_EQ(t.piece(Tokenizer::kSep), "[SEP]");
  EXPECT_EQ(t.piece(Tokenizer::kMask), "[MASK]");
  for (const std::string& x : s) {
    const std::vector<int> ids = t.encode(x);
    ASSERT_FALSE(ids.empty());
    for (int id : ids) EXPECT_GE(id, Tokenizer::kUnk);
    EXPECT_EQ(t.decode(ids), x);
  }
  // Unseen characters become <unk>, not an error.
  const std::vector<int> ids = t.encode("zzz \xe2\x98\x83");
  EXPECT_NE(std::find(ids.begin(), ids.end(), Tokenizer::kUnk), ids.end());
  EXPECT_THROW(t.decode({-1}), InvalidArgument);
}

TEST(Tokenizer, TrainingIsDeterministicAndSavesLoads) {
  const std::vector<std::string> s = sample_sentences();
  const Tokenizer a = Tokenizer::train(s, {.vocab_size = 200});
  const Tokenizer b = Tokenizer::train(s, {.vocab_size = 200});
  EXPECT_EQ(a.bytes(), b.bytes());
  const std::string path = testing::TempDir() + "/tok_rt.model";
  a.save(path);
  const Tokenizer c = Tokenizer::load(path);
  EXPECT_EQ(c.bytes(), a.bytes());
  for (const std::string& x : s) EXPECT_EQ(c.encode(x), a.encode(x));
  const Tokenizer bpe = Tokenizer::train(s, {.vocab_size = 200, .model_type = "bpe"});
  EXPECT_EQ(bpe.decode(bpe.encode(s[0])), s[0]);
}

TEST(Tokenizer, BadOptionsAndCorruptFilesAreClearErrors) {
  const std::vector<std::string> s = sample_sentences();
  std::string e = error_of([&] { Tokenizer::train(s, {.vocab_size = 3}); });
  EXPECT_NE(e.find("tokenizer vocab_size must be > 6, got 3"), std::string::npos) << e;
  e = error_of([&] { Tokenizer::train(s, {.model_type = "word2"}); });
  EXPECT_NE(e.find("model_type must be 'unigram' or 'bpe', got 'word2'"), std::string::npos) << e;
  e = error_of([] { Tokenizer::train({}, {}); });
  EXPECT_NE(e.find("no sentences"), std::string::npos) << e;
  const std::string good = Tokenizer::train(s, {.vocab_size = 200}).bytes();
  e = error_of(
      [&] { Tokenizer::load(write_temp("tok_bad.model", good.substr(0, good.size() / 2))); });
  EXPECT_NE(e.find("cannot read the tokenizer"), std::string::npos) << e;
  EXPECT_NE(e.find("tok_bad.model"), std::string::npos) << e;
  EXPECT_THROW(Tokenizer::load(testing::TempDir() + "/tok_missing.model"), IoError);
}

TEST(Batching, PacksClsTokensSepAndPadding) {
  const std::vector<int> r0 = {10, 11, 12}, r1 = {20, 21, 22, 23, 24, 25, 26, 27};
  Batch b;
  pack_batch({&r0, &r1}, 6, b, {4, 7});
  ASSERT_EQ(b.ids.shape(), (Shape{2, 6}));
  EXPECT_EQ(b.ids.to_vector(), (std::vector<float>{2, 10, 11, 12, 3, 0, 2, 20, 21, 22, 23, 3}));
  EXPECT_EQ(b.mask.to_vector(), (std::vector<float>{1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(b.real_tokens, 11);
  EXPECT_EQ(b.labels, (std::vector<int64_t>{4, 7}));
  EXPECT_THROW(pack_batch({&r0}, 2, b), InvalidArgument);
  EXPECT_THROW(pack_batch({&r0}, 6, b, {1, 2}), InvalidArgument);
}

TEST(Batching, MlmMaskingStatistics) {
  const int64_t B = 4000, L = 48, V = 1000;
  std::vector<std::vector<int>> rows(B);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < 20 + b % 25; ++i) rows[b].push_back(5 + (b * 31 + i * 7) % (V - 5));
  }
  std::vector<const std::vector<int>*> ptrs;
  for (const auto& r : rows) ptrs.push_back(&r);
  Batch clean, b;
  pack_batch(ptrs, L, clean);
  b = clean;
  mask_batch(b, {}, V, 42);
  const int64_t P = b.positions.dim(1);
  EXPECT_EQ(P, 8);  // ceil(0.15 * 48)
  int64_t predicted = 0, candidates = 0, masked = 0, randomised = 0, kept = 0;
  for (int64_t r = 0; r < B; ++r) {
    const int64_t n = static_cast<int64_t>(rows[r].size());  // tokens between [CLS] and [SEP]
    candidates += n;
    int64_t k = 0, last = -1;
    std::set<int64_t> chosen;
    for (int64_t j = 0; j < P; ++j) {
      if (b.mlm_weights[r * P + j] == 0) continue;
      ++k;
      const int64_t pos = static_cast<int64_t>(b.positions[r * P + j]);
      EXPECT_GT(pos, last) << "positions sorted and unique";
      last = pos;
      ASSERT_GE(pos, 1);
      ASSERT_LE(pos, n) << "never [CLS], [SEP] or padding";
      EXPECT_EQ(b.mlm_labels[r * P + j], clean.ids[r * L + pos]);
      const float now = b.ids[r * L + pos];
      if (now == Tokenizer::kMask) {
        ++masked;
      } else if (now != clean.ids[r * L + pos]) {
        ++randomised;
        EXPECT_GE(now, Tokenizer::kNumSpecial);
        EXPECT_LT(now, V);
      } else {
        ++kept;
      }
      chosen.insert(pos);
    }
    EXPECT_EQ(k, std::min<int64_t>(P, std::llround(0.15 * n)));
    predicted += k;
    // Every other position is untouched.
    for (int64_t i = 0; i < L; ++i) {
      if (!chosen.count(i)) {
        EXPECT_EQ(b.ids[r * L + i], clean.ids[r * L + i]);
      }
    }
  }
  EXPECT_NEAR(predicted / double(candidates), 0.15, 0.01);
  EXPECT_NEAR(masked / double(predicted), 0.8, 0.01);
  // A random replacement equals the original with probability 1/995; counted as kept.
  EXPECT_NEAR(randomised / double(predicted), 0.1, 0.01);
  EXPECT_NEAR(kept / double(predicted), 0.1, 0.01);
  // Same key, same corruption; another key, another one.
  Batch again = clean, other = clean;
  mask_batch(again, {}, V, 42);
  mask_batch(other, {}, V, 43);
  EXPECT_EQ(again.ids.to_vector(), b.ids.to_vector());
  EXPECT_EQ(again.positions.to_vector(), b.positions.to_vector());
  EXPECT_NE(other.ids.to_vector(), b.ids.to_vector());
}

}  // namespace
}  // namespace sparsemoe
