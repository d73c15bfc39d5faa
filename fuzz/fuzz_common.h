// What every fuzz target shares: the input as a string, and the rule that a reader of outside
// input may fail only with the engine's own typed errors. Any other exception (a JSON library
// type_error, std::out_of_range, std::bad_alloc) escapes LLVMFuzzerTestOneInput, and libFuzzer
// reports it as a crash with the input that caused it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/io/file_io.h"

namespace sparsemoe::fuzz {

inline std::string text(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// Runs f; the engine's typed errors are an expected outcome for hostile input.
template <class F>
void expect_typed_errors(F&& f) {
  try {
    f();
  } catch (const InvalidArgument&) {
  } catch (const ConfigError&) {
  } catch (const IoError&) {
  } catch (const ResourceError&) {
  }
}

}  // namespace sparsemoe::fuzz
