// Strict JSON config reading (see config_io.h).
#include "sparsemoe/core/config_io.h"

#include <cmath>
#include <vector>

namespace sparsemoe {

std::string json_error_text(const nlohmann::json::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    const auto close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  return s;
}

nlohmann::json parse_json(const std::string& text, const std::string& what) {
  // One set of keys per open object; the callback sees every key as it is read.
  std::vector<std::vector<std::string>> open;
  std::string duplicate;
  auto cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) {
      open.emplace_back();
    } else if (ev == E::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (ev == E::key && !open.empty() && duplicate.empty()) {
      const std::string k = parsed.get<std::string>();
      for (const auto& seen : open.back())
        if (seen == k) duplicate = k;
      open.back().push_back(k);
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, cb);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(what + ": invalid JSON: " + json_error_text(e));
  }
  if (!duplicate.empty()) throw ConfigError(what + ": duplicate key '" + duplicate + "'");
  return j;
}

void json_read(const nlohmann::json& j, bool& out, const std::string& what) {
  if (!j.is_boolean())
    throw ConfigError(what + ": expected true or false, got " + std::string(j.type_name()));
  out = j.get<bool>();
}

void json_read(const nlohmann::json& j, std::string& out, const std::string& what) {
  if (!j.is_string())
    throw ConfigError(what + ": expected a string, got " + std::string(j.type_name()));
  out = j.get<std::string>();
}

void json_read(const nlohmann::json& j, double& out, const std::string& what) {
  if (!j.is_number())
    throw ConfigError(what + ": expected a number, got " + std::string(j.type_name()));
  out = j.get<double>();
}

void json_read(const nlohmann::json& j, nlohmann::json& out, const std::string&) { out = j; }

void json_read_integer(const nlohmann::json& j, long double lo, long double hi, int64_t* out_signed,
                       uint64_t* out_unsigned, const std::string& what) {
  auto range = [&] {
    return "an integer in [" +
           (lo < -9.2e18L ? std::string("-2^63")
                          : nlohmann::json(static_cast<int64_t>(lo)).dump()) +
           ", " +
           (hi >= 9.2e18L ? std::string(hi > 1.0e19L ? "2^64-1" : "2^63-1")
                          : nlohmann::json(static_cast<int64_t>(hi)).dump()) +
           "]";
  };
  if (!j.is_number())
    throw ConfigError(what + ": expected an integer, got " + std::string(j.type_name()));
  long double v;
  if (j.is_number_unsigned())
    v = static_cast<long double>(j.get<uint64_t>());
  else if (j.is_number_integer())
    v = static_cast<long double>(j.get<int64_t>());
  else
    v = static_cast<long double>(j.get<double>());
  if (v != std::trunc(v) || !std::isfinite(static_cast<double>(v)))
    throw ConfigError(what + ": expected an integer, got " + j.dump());
  if (!(v >= lo && v <= hi))
    throw ConfigError(what + ": expected " + range() + ", got " + j.dump());
  // Exact for every integer JSON holds: unsigned and signed ones are read as such.
  if (out_signed) *out_signed = j.is_number_float() ? static_cast<int64_t>(v) : j.get<int64_t>();
  if (out_unsigned)
    *out_unsigned = j.is_number_float() ? static_cast<uint64_t>(v) : j.get<uint64_t>();
}

JsonFields::JsonFields(const nlohmann::json& j, std::string where)
    : j_(j), where_(std::move(where)) {
  if (!j_.is_object())
    throw ConfigError(where_ + ": expected a JSON object, got " + std::string(j_.type_name()));
}

const nlohmann::json* JsonFields::object(const std::string& key) {
  auto it = j_.find(key);
  if (it == j_.end()) return nullptr;
  seen_.insert(key);
  if (!it->is_object())
    throw ConfigError(where_ + ": key '" + key + "' must be an object, got " +
                      std::string(it->type_name()));
  return &*it;
}

void JsonFields::finish() const {
  for (auto it = j_.begin(); it != j_.end(); ++it)
    if (!seen_.count(it.key())) throw ConfigError(where_ + ": unknown key '" + it.key() + "'");
}

void reject_moved_keys(const nlohmann::json& j, const std::string& where,
                       const std::vector<std::pair<std::string, std::string>>& moved) {
  if (!j.is_object()) return;
  for (const auto& [from, to] : moved)
    if (j.contains(from)) throw ConfigError(where + ": '" + from + "' is now '" + to + "'");
}

namespace {
std::string num(double v) {
  nlohmann::json j = v;
  if (std::abs(v) < 1e15 && v == std::trunc(v)) j = static_cast<int64_t>(v);
  return j.dump();
}
}  // namespace

std::string Rule::text() const {
  if (!names.empty()) {
    std::string s = "one of ";
    for (size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + names[i];
    return s;
  }
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (has_lo && has_hi)
    return "in " + std::string(lo_open ? "(" : "[") + num(lo) + ", " + num(hi) +
           (hi_open ? ")" : "]");
  if (has_lo) return (lo_open ? "> " : ">= ") + num(lo);
  if (has_hi) return (hi_open ? "< " : "<= ") + num(hi);
  return "";
}

void Rule::check(const std::string& where, const std::string& key, double v) const {
  const bool ok = !std::isnan(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  if (!ok) throw ConfigError(where + ": " + key + ": expected " + text() + ", got " + num(v));
}

void Rule::check(const std::string& where, const std::string& key, const std::string& v) const {
  if (names.empty()) return;
  for (const auto& n : names)
    if (n == v) return;
  throw ConfigError(where + ": " + key + ": expected " + text() + ", got '" + v + "'");
}

void apply_override(nlohmann::json& config, const std::string& kv) {
  const auto eq = kv.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set: expected key=value, got '" + kv + "'");
  const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
  nlohmann::json* node = &config;
  size_t begin = 0;
  while (true) {
    if (!node->is_object())
      throw ConfigError("--set " + key + ": '" + key.substr(0, begin ? begin - 1 : 0) +
                        "' is not an object");
    const size_t dot = key.find('.', begin);
    const std::string part = key.substr(begin, dot == std::string::npos ? dot : dot - begin);
    if (part.empty()) throw ConfigError("--set: empty key part in '" + key + "'");
    if (dot == std::string::npos) {
      nlohmann::json v = nlohmann::json::parse(value, nullptr, false);
      (*node)[part] = v.is_discarded() ? nlohmann::json(value) : v;
      return;
    }
    node = &(*node)[part];
    if (node->is_null()) *node = nlohmann::json::object();
    begin = dot + 1;
  }
}

}  // namespace sparsemoe
