// Error types thrown at public entry points. Every message names the offending argument and
// what was expected, so a user can fix the call without reading our source.
#pragma once

#include <stdexcept>
#include <string>

namespace sparsemoe {

// A bad argument value or shape (the caller's mistake).
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A malformed configuration: unknown key, wrong type, out-of-range option.
class ConfigError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Throws InvalidArgument with `message` when `condition` is false.
inline void check_arg(bool condition, const std::string& message) {
  if (!condition) throw InvalidArgument(message);
}

}  // namespace sparsemoe
