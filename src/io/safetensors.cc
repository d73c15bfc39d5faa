// safetensors encoding and validated decoding (see safetensors.h).
#include "sparsemoe/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/io/file_io.h"

namespace sparsemoe {

namespace {

using nlohmann::json;

void put_u64_le(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_u64_le(const std::string& s) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(s[i]);
  return v;
}

static_assert(sizeof(float) == 4, "float32 storage");

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw IoError(path + ": no tensor named '" + name + "'");
}

std::string encode_safetensors(const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__" || !seen.insert(name).second)
      throw IoError("safetensors: tensor name '" + name + "' is empty, reserved or repeated");
    const uint64_t bytes = static_cast<uint64_t>(t->numel()) * 4;
    header[name] = {
        {"dtype", "F32"}, {"shape", t->shape()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // data starts 8-byte aligned
  std::string out;
  out.reserve(8 + text.size() + offset);
  put_u64_le(out, text.size());
  out += text;
  for (const auto& [name, t] : tensors)  // little-endian float32, as on every target we build for
    out.append(reinterpret_cast<const char*>(t->data()), static_cast<size_t>(t->numel()) * 4);
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, encode_safetensors(tensors, metadata));
}

SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& where) {
  auto bad = [&](const std::string& m) -> IoError {
    return IoError(where + ": not a valid safetensors file: " + m);
  };
  if (bytes.size() < 8) throw bad("shorter than the 8-byte header length");
  const uint64_t n = get_u64_le(bytes);
  if (n > bytes.size() - 8)
    throw bad("header length " + std::to_string(n) + " runs past the end of the file (" +
              std::to_string(bytes.size()) + " bytes)");
  json header;
  try {
    header = parse_json(bytes.substr(8, n), "header");  // duplicate tensor names are errors too
  } catch (const ConfigError& e) {
    throw bad(e.what());
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  const uint64_t data_size = bytes.size() - 8 - n;
  const char* data = bytes.data() + 8 + n;
  SafetensorsFile f;
  f.path = where;
  struct Item {
    uint64_t begin, end;
    std::string name;
    Tensor tensor;
  };
  std::vector<Item> items;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) throw bad("__metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string())
          throw bad("__metadata__ value '" + m.key() + "' is not a string");
        f.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets"))
      throw bad("tensor '" + name + "' lacks dtype, shape or data_offsets");
    if (e["dtype"] != "F32")
      throw bad("tensor '" + name + "' has dtype " + e["dtype"].dump() + "; expected \"F32\"");
    Shape shape;
    uint64_t begin = 0, end = 0;
    try {
      json_read(e["shape"], shape, "tensor '" + name + "': shape");
      std::vector<uint64_t> off;
      json_read(e["data_offsets"], off, "tensor '" + name + "': data_offsets");
      if (off.size() != 2) throw bad("tensor '" + name + "': data_offsets needs 2 entries");
      begin = off[0], end = off[1];
    } catch (const ConfigError& err) {
      throw bad(err.what());
    }
    // Checked: a hostile shape must not wrap around to a small size.
    uint64_t numel = 1;
    for (int64_t d : shape) {
      if (d < 0) throw bad("tensor '" + name + "' has a negative dimension");
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) || numel > (1ull << 61))
        throw bad("tensor '" + name + "': shape " + shape_str(shape) +
                  " has more elements than 64-bit sizes hold");
    }
    if (end < begin || end > data_size)
      throw bad("tensor '" + name + "': data_offsets [" + std::to_string(begin) + ", " +
                std::to_string(end) + ") lie outside the " + std::to_string(data_size) +
                "-byte data");
    if (end - begin != numel * 4)
      throw bad("tensor '" + name + "': shape " + shape_str(shape) + " needs " +
                std::to_string(numel * 4) + " bytes, data_offsets give " +
                std::to_string(end - begin));
    Tensor t(shape);
    if (numel) std::memcpy(t.data(), data + begin, numel * 4);
    items.push_back({begin, end, name, std::move(t)});
  }
  // The tensors must tile the data exactly: no overlap, no hole, nothing after.
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.begin < b.begin; });
  uint64_t at = 0;
  for (const auto& s : items) {
    if (s.begin != at)
      throw bad(s.begin > at ? "a hole of " + std::to_string(s.begin - at) +
                                   " bytes before tensor '" + s.name + "'"
                             : "tensor '" + s.name + "' overlaps the previous one");
    at = s.end;
  }
  if (at != data_size) throw bad(std::to_string(data_size - at) + " bytes after the last tensor");
  for (auto& it : items) f.tensors.emplace_back(it.name, std::move(it.tensor));  // data order
  return f;
}

SafetensorsFile load_safetensors(const std::string& path) {
  return decode_safetensors(read_file(path), path);
}

}  // namespace sparsemoe
