// Strict JSON config reading (see config_io.h).
#include "sparsemoe/core/config_io.h"

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
