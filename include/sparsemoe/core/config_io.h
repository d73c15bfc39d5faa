// Strict JSON config reading: every key is read by name, type errors name the key and the
// expected type, and keys left unread at finish() are an error that names them. Each layer's
// config struct uses one JsonFields in its from_json, so "unknown key" behaves the same everywhere.
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

class JsonFields {
 public:
  // `where` names the config in messages, e.g. "MoeLayerConfig".
  JsonFields(const nlohmann::json& j, std::string where);

  template <class T>
  void read(const std::string& key, T& out) {
    auto it = j_.find(key);
    if (it == j_.end()) return;
    seen_.insert(key);
    try {
      out = it->template get<T>();
    } catch (const nlohmann::json::exception&) {
      throw ConfigError(where_ + ": key '" + key + "' has the wrong type (" + it->type_name() +
                        ")");
    }
  }
  // The sub-object at `key`, or null when absent; marks it as read.
  const nlohmann::json* object(const std::string& key);
  // Throws ConfigError naming the first key that was never read.
  void finish() const;
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& j_;
  std::string where_;
  std::set<std::string> seen_;
};

// Applies one command-line override "key=value" to a config: the key is a dotted path into nested
// objects ("pretrain.optimizer.learning_rate"); the value is parsed as JSON when it is valid JSON,
// else taken as a string. Throws ConfigError when a path step is not an object. Unknown keys are
// left for the strict from_json that follows to reject.
void apply_override(nlohmann::json& config, const std::string& key_equals_value);

}  // namespace sparsemoe
