// Strict JSON config reading (see config_io.h).
#include "sparsemoe/core/config_io.h"

#include <cmath>

namespace sparsemoe {

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
