// Fuzzes `sparsemoe route`'s request reader and the routing it runs: whatever the request, the
// answer is JSON or an InvalidArgument naming the problem.
#include <nlohmann/json.hpp>

#include "commands.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sparsemoe::fuzz::expect_typed_errors([&] {
    const std::string answer = sparsemoe::cli::route_answer(sparsemoe::fuzz::text(data, size));
    if (!nlohmann::json::accept(answer)) __builtin_trap();
  });
  return 0;
}
