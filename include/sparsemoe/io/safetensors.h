// safetensors files (the format of Hugging Face's safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the tensor bytes. We write float32 tensors in the given
// order, the header padded with spaces so the data starts 8-byte aligned, no holes, atomically.
// Reading validates everything and names the problem: a short file, a header length past the
// end, bad JSON, a dtype other than F32, a bad shape, offsets that overlap, leave holes, run past
// the data or disagree with the shape.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe {

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  // The named tensor; throws IoError naming the file and the missing name.
  const Tensor& at(const std::string& name) const;
  std::string path;
};

// The file's bytes (exposed for tests of the reader's validation).
std::string encode_safetensors(const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                               const std::map<std::string, std::string>& metadata = {});
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// `where` names the source in error messages.
SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& where);
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace sparsemoe
