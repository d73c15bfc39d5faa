// Whole-file reads and crash-safe writes. write_file_atomic writes a temporary file in the
// target's directory, fsyncs it, renames it over the target and fsyncs the directory: a reader
// (or a crash) sees either the old file or the new one, never a partial write.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace sparsemoe {

// A file that cannot be read, written or parsed. The message names the path.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

void write_file_atomic(const std::string& path, std::string_view bytes);
std::string read_file(const std::string& path);

}  // namespace sparsemoe
