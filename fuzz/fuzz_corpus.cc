// Fuzzes the corpus readers: the first byte picks the format (WordNet data.<pos> with pos from
// its low bits, `label<TAB>text`, plain text), the rest is the file's text.
#include "fuzz_common.h"
#include "sparsemoe/data/corpus.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body = sparsemoe::fuzz::text(data + 1, size - 1);
  sparsemoe::fuzz::expect_typed_errors([&] {
    switch (data[0] % 3) {
      case 0: {
        sparsemoe::Corpus c;
        sparsemoe::parse_wordnet_data(body, "data.noun", (data[0] >> 2) % 4, c);
        for (const auto& e : c.examples)
          if (e.label < 0 || e.label >= 45) __builtin_trap();  // a label outside the 45 lexnames
        break;
      }
      case 1: {
        const sparsemoe::Corpus c = sparsemoe::parse_labeled_text(body, "corpus.tsv");
        for (const auto& e : c.examples)
          if (e.label < 0 || e.label >= static_cast<int64_t>(c.label_names.size()))
            __builtin_trap();
        break;
      }
      default:
        sparsemoe::parse_plain_text(body, "text.txt");
    }
  });
  return 0;
}
