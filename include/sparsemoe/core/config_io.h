// Configs: each config struct declares its fields once, and everything else comes from that one
// declaration: JSON writing, strict JSON reading (unknown keys, wrong types and moved keys are
// errors naming the key), the per-field checks, and the reference table in docs/configuration.md.
//
//   struct FeedForwardConfig {
//     int64_t d_ff = 2048;
//     template <class V> void fields(V& v) {
//       v("d_ff", d_ff, "F, the inner width", at_least(1));
//       ...
//     }
//   };
//
// A field whose type has fields() is a nested object; `Section` nests one while leaving out keys
// that the enclosing config sets itself. Rules across fields stay in each config's validate().
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sparsemoe/core/errors.h"

namespace sparsemoe {

// Parses JSON text strictly: a duplicate key in any object is an error (the JSON library would
// keep the last silently), and errors read "what: invalid JSON at byte N: <reason>" without the
// library's exception tags. Throws ConfigError.
nlohmann::json parse_json(const std::string& text, const std::string& what);
// The library's exception text without its "[json.exception.type_error.302] " tag.
std::string json_error_text(const nlohmann::json::exception& e);

// Reads j into out strictly (see JsonFields::read); `what` names the value in the ConfigError.
void json_read(const nlohmann::json& j, bool& out, const std::string& what);
void json_read(const nlohmann::json& j, std::string& out, const std::string& what);
void json_read(const nlohmann::json& j, double& out, const std::string& what);
void json_read(const nlohmann::json& j, nlohmann::json& out, const std::string& what);
// Any integer type: integral values in [min, max] of the type.
void json_read_integer(const nlohmann::json& j, long double lo, long double hi, int64_t* out_signed,
                       uint64_t* out_unsigned, const std::string& what);
template <class T>
requires std::is_integral_v<T> &&
    (!std::is_same_v<T, bool>)void json_read(const nlohmann::json& j, T& out,
                                             const std::string& what) {
  if constexpr (std::is_signed_v<T>) {
    int64_t v = 0;
    json_read_integer(j, static_cast<long double>(std::numeric_limits<T>::min()),
                      static_cast<long double>(std::numeric_limits<T>::max()), &v, nullptr, what);
    out = static_cast<T>(v);
  } else {
    uint64_t v = 0;
    json_read_integer(j, 0, static_cast<long double>(std::numeric_limits<T>::max()), nullptr, &v,
                      what);
    out = static_cast<T>(v);
  }
}
template <class T>
void json_read(const nlohmann::json& j, std::vector<T>& out, const std::string& what) {
  if (!j.is_array()) throw ConfigError(what + ": expected a list, got " + j.type_name());
  std::vector<T> v(j.size());
  for (size_t i = 0; i < j.size(); ++i) json_read(j[i], v[i], what + "[" + std::to_string(i) + "]");
  out = std::move(v);
}
// Enums and other types with their own from_json.
template <class T>
requires std::is_enum_v<T>
void json_read(const nlohmann::json& j, T& out, const std::string& what) {
  if (!j.is_string()) throw ConfigError(what + ": expected a string, got " + j.type_name());
  try {
    out = j.template get<T>();
  } catch (const ConfigError& e) {
    throw ConfigError(what + ": " + e.what());
  }
}

class JsonFields {
 public:
  // `where` names the config in messages, e.g. "MoeLayerConfig".
  JsonFields(const nlohmann::json& j, std::string where);

  // Strict: an integer field takes only integral numbers within its type's range (1.5, -1 for
  // an unsigned field and 2^64 are errors), a boolean only true/false, a string only a string.
  template <class T>
  void read(const std::string& key, T& out) {
    auto it = j_.find(key);
    if (it == j_.end()) return;
    seen_.insert(key);
    json_read(*it, out, where_ + ": " + key);
  }
  // The sub-object at `key`, or null when absent; marks it as read.
  const nlohmann::json* object(const std::string& key);
  bool has(const std::string& key) const { return j_.contains(key); }
  // Throws ConfigError naming the first key that was never read.
  void finish() const;
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& j_;
  std::string where_;
  std::set<std::string> seen_;
};

// ---- field rules
// ---------------------------------------------------------------------------------

// The range a number must lie in, or the names a string must be one of.
struct Rule {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
  std::vector<std::string> names;
  // ">= 1", "in [0, 1)", "one of relu, gelu"; "" for no rule.
  std::string text() const;
  // Throws ConfigError "where: key: expected <text>, got <value>".
  void check(const std::string& where, const std::string& key, double value) const;
  void check(const std::string& where, const std::string& key, const std::string& value) const;
};
inline Rule range_rule(double lo, double hi, bool lo_open, bool hi_open) {
  Rule r;
  r.lo = lo, r.hi = hi, r.lo_open = lo_open, r.hi_open = hi_open;
  return r;
}
inline Rule at_least(double lo) { return range_rule(lo, Rule{}.hi, false, false); }
inline Rule above(double lo) { return range_rule(lo, Rule{}.hi, true, false); }
inline Rule in_closed(double lo, double hi) { return range_rule(lo, hi, false, false); }
inline Rule in_half_open(double lo, double hi) { return range_rule(lo, hi, false, true); }
inline Rule in_open_closed(double lo, double hi) { return range_rule(lo, hi, true, false); }
inline Rule one_of(std::vector<std::string> names) {
  Rule r;
  r.names = std::move(names);
  return r;
}

// An enum's names in value order (0, 1, ...), declared once: its JSON text, its parser and the
// rule its config field checks and documents.
template <class E, size_t N>
struct EnumNames {
  std::array<const char*, N> names;
  std::string operator()(E e) const { return names[static_cast<size_t>(e)]; }
  // Throws ConfigError "what: expected one of a, b, c, got 'x'".
  E parse(const std::string& s, const std::string& what) const {
    for (size_t i = 0; i < N; ++i)
      if (s == names[i]) return static_cast<E>(i);
    throw ConfigError(what + ": expected " + rule().text() + ", got '" + s + "'");
  }
  Rule rule() const { return one_of({names.begin(), names.end()}); }
};

// A nested config without the keys its parent sets itself (dotted paths inside the section, e.g.
// "experts.d_ff"); `owner` says who sets them, for the error when one is given anyway.
template <class T>
struct Section {
  T& value;
  std::vector<std::string> excluded;
  std::string owner;
};

struct FieldProbe {
  template <class... A>
  void operator()(A&&...) {}
};
template <class T>
concept HasFields = requires(T& t, FieldProbe& p) {
  t.fields(p);
};
// A config may fill defaults that depend on what the JSON gave (after_read(j), j the object read).
template <class T>
concept HasAfterRead = requires(T& t, const nlohmann::json& j) {
  t.after_read(j);
};

namespace config_detail {

template <class T>
struct IsSection : std::false_type {};
template <class T>
struct IsSection<Section<T>> : std::true_type {};

// A key left out of a nested config: its dotted path and who sets it instead.
struct Excluded {
  std::string path, owner;
};
using ExcludedList = std::vector<Excluded>;

inline const Excluded* find_excluded(const ExcludedList& ex, const std::string& key) {
  for (const auto& e : ex)
    if (e.path == key) return &e;
  return nullptr;
}
// The exclusions below `key` (with "key." stripped), plus those a Section adds there.
template <class T>
ExcludedList below(const ExcludedList& ex, const std::string& key, const T& v) {
  ExcludedList out;
  for (const auto& e : ex)
    if (e.path.rfind(key + ".", 0) == 0) out.push_back({e.path.substr(key.size() + 1), e.owner});
  if constexpr (IsSection<T>::value)
    for (const auto& p : v.excluded) out.push_back({p, v.owner});
  return out;
}
// The config inside a field: the Section's value, or the field itself.
template <class T>
auto& inner(T& v) {
  if constexpr (IsSection<T>::value)
    return v.value;
  else
    return v;
}
template <class T>
constexpr bool is_nested() {
  return IsSection<T>::value || HasFields<T>;
}

// Each visitor receives (key, member, doc[, rule]) per field, in declaration order.
struct Writer {
  nlohmann::json& j;
  ExcludedList ex;
  template <class T>
  void operator()(const char* key, T& v, const char* = "", const Rule& = {}) {
    if (find_excluded(ex, key)) return;
    if constexpr (is_nested<T>()) {
      nlohmann::json sub = nlohmann::json::object();
      Writer w{sub, below(ex, key, v)};
      inner(v).fields(w);
      j[key] = sub;
    } else {
      j[key] = v;
    }
  }
};

struct Reader {
  JsonFields& f;
  ExcludedList ex;
  template <class T>
  void operator()(const char* key, T& v, const char* = "", const Rule& = {}) {
    if (const Excluded* e = find_excluded(ex, key)) {
      if (f.has(key))
        throw ConfigError(f.where() + "." + key + ": set by " + e->owner + ", not here");
      return;
    }
    if constexpr (is_nested<T>()) {
      if (const nlohmann::json* sub = f.object(key)) {
        JsonFields g(*sub, f.where() + "." + key);
        Reader r{g, below(ex, key, v)};
        auto& c = inner(v);
        c.fields(r);
        g.finish();
        if constexpr (HasAfterRead<std::remove_reference_t<decltype(c)>>) c.after_read(*sub);
      }
    } else {
      f.read(key, v);
    }
  }
};

struct Checker {
  std::string where;
  template <class T>
  void operator()(const char* key, T& v, const char* = "", const Rule& rule = {}) {
    if constexpr (is_nested<T>()) {
      Checker c{where + "." + key};
      inner(v).fields(c);
    } else if constexpr (std::is_same_v<T, std::string>) {
      rule.check(where, key, v);
    } else if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      rule.check(where, key, static_cast<double>(v));
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      for (int64_t x : v) rule.check(where, key, static_cast<double>(x));
    }
  }
};

struct DocRow {
  std::string key, type, default_value, rule, doc;
};

template <class T>
std::string type_name() {
  if constexpr (std::is_same_v<T, bool>)
    return "boolean";
  else if constexpr (std::is_integral_v<T>)
    return "integer";
  else if constexpr (std::is_floating_point_v<T>)
    return "number";
  else if constexpr (std::is_same_v<T, std::vector<int64_t>>)
    return "list of integers";
  else if constexpr (std::is_same_v<T, std::vector<std::string>>)
    return "list of strings";
  else
    return "string";
}

struct Documenter {
  std::vector<DocRow>& rows;
  std::string prefix;
  ExcludedList ex;
  template <class T>
  void operator()(const char* key, T& v, const char* doc = "", const Rule& rule = {}) {
    if (find_excluded(ex, key)) return;
    if constexpr (is_nested<T>()) {
      Documenter d{rows, prefix + key + ".", below(ex, key, v)};
      inner(v).fields(d);
    } else {
      rows.push_back({prefix + key, type_name<T>(), nlohmann::json(v).dump(), rule.text(), doc});
    }
  }
};

}  // namespace config_detail

// The declared fields of c as a JSON object (every field, nested ones as objects).
template <class T>
nlohmann::json config_to_json(const T& c) {
  nlohmann::json j = nlohmann::json::object();
  config_detail::Writer w{j, {}};
  const_cast<T&>(c).fields(w);  // the writer only reads
  return j;
}

// Reads the keys present in j over c (absent keys keep c's values), strictly.
template <class T>
void config_read(const nlohmann::json& j, const std::string& where, T& c) {
  JsonFields f(j, where);
  config_detail::Reader r{f, {}};
  c.fields(r);
  f.finish();
  if constexpr (HasAfterRead<T>) c.after_read(j);
}

// Checks every declared field (nested ones included) against its rule.
template <class T>
void check_fields(const T& c, const std::string& where) {
  config_detail::Checker k{where};
  const_cast<T&>(c).fields(k);
}

// The markdown table of c's fields, c's values as the defaults: key, type, default, allowed, doc.
template <class T>
std::string config_doc(const T& c) {
  std::vector<config_detail::DocRow> rows;
  config_detail::Documenter d{rows, "", {}};
  const_cast<T&>(c).fields(d);
  std::string out =
      "| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |\n";
  for (const auto& r : rows)
    out += "| `" + r.key + "` | " + r.type + " | `" + r.default_value + "` | " + r.rule + " | " +
           r.doc + " |\n";
  return out;
}

// Keys that moved: throws ConfigError "where: 'old' is now 'new'" for the first one present in j.
void reject_moved_keys(const nlohmann::json& j, const std::string& where,
                       const std::vector<std::pair<std::string, std::string>>& moved);

// Applies one command-line override "key=value" to a config: the key is a dotted path into nested
// objects ("pretrain.optimizer.learning_rate"); the value is parsed as JSON when it is valid JSON,
// else taken as a string. Throws ConfigError when a path step is not an object. Unknown keys are
// left for the strict from_json that follows to reject.
void apply_override(nlohmann::json& config, const std::string& key_equals_value);

}  // namespace sparsemoe
