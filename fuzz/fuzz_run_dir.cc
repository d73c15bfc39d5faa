// Fuzzes a run directory's own files as `eval`, `predict`, `inspect` and `train --resume` read
// them: the first byte picks config.json (strict, old formats upgraded) or labels.json.
#include "fuzz_common.h"
#include "sparsemoe/train/trainer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body = sparsemoe::fuzz::text(data + 1, size - 1);
  sparsemoe::fuzz::expect_typed_errors([&] {
    if (data[0] % 2 == 0) {
      const sparsemoe::TrainConfig c = sparsemoe::parse_run_config(body, "config.json");
      // What was read is what a new run would write, and reads back the same.
      const std::string again = c.to_json().dump(2);
      if (sparsemoe::parse_run_config(again, "config.json").to_json().dump(2) != again)
        __builtin_trap();
    } else {
      sparsemoe::parse_run_labels(body, "labels.json");
    }
  });
  return 0;
}
