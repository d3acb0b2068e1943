// The config's key table and its helpers, shared by the files of the config
// loader: config_table.cpp (the table), config_parse.cpp (TOML and the
// environment) and config.cpp (defaults, example, file reading). Internal to
// protocol/: include config.hpp, not this.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "protocol/config.hpp"

namespace klynaa::protocol::config_detail {

using field = std::variant<std::string*, int64_t*, double*, bool*>;
using value = std::variant<std::string, int64_t, double, bool>;

/// Returns "" when `v` is valid for the key, else what it must be.
using check_fn = std::string (*)(const value&);

struct key_spec {
  std::string_view section;
  std::string_view key;
  field (*ref)(config&);  ///< the field this key sets; its initial value is the default
  check_fn check;
  std::string_view help;
};

/// Section comments of the example config; also the list of known sections.
struct section_spec {
  std::string_view name;
  std::string_view help;
};

/// A constant table, for range-for (the tables are arrays, constant-initialised).
template <class T>
struct table_view {
  const T* first;
  const T* last;
  const T* begin() const { return first; }
  const T* end() const { return last; }
};

/// Every scalar key, in the order of the example config.
table_view<key_spec> keys();

/// Every section, in the order of the example config.
table_view<section_spec> sections();

enum class kind { string, integer, number, boolean };

inline kind kind_of(const field& f) { return static_cast<kind>(f.index()); }
std::string_view kind_name(kind k);     ///< "string", "integer", ...
std::string_view with_article(kind k);  ///< "a string", "an integer", ...

/// The key `key` of `section`, or nullptr.
const key_spec* find_key(std::string_view section, std::string_view key);
bool is_section(std::string_view name);

/// "KLYNAA_<SECTION>_<KEY>".
std::string env_name(const key_spec& k);

void assign(field f, const value& v);
value read(field f);

/// `v` as TOML: "\"log\"", "8", "5.0", "false".
std::string to_toml(const value& v);

template <class Names>
bool contains(const Names& names, std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

/// "a, b, c".
template <class Names>
std::string join(const Names& names) {
  std::string out;
  for (auto n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

/// The function names of protocol/schema.cpp, in its order: what [retry.FUNCTION]
/// and [[schedule]] function may name.
const std::vector<std::string_view>& function_names();

}  // namespace klynaa::protocol::config_detail
