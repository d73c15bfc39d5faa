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

}  // namespace sparsemoe
