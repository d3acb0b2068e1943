// The functions this process knows and the actor kind that runs each: the one
// lookup every layer uses at run time (docs/design.md, "One source for each
// fixed list"). It is built from the fixed table (schema.hpp) and is where
// functions the config adds at run time join — the Django-defined tasks of a
// later issue get add()ed here, so there is never a second list to keep in step.
//
// A registry is a value: build it once at start, then share it read-only
// (const member functions are thread-safe).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace klynaa::protocol {

struct config;

/// One function the process knows.
struct registered_function {
  std::string name;           ///< e.g. "processEscrowRelease"
  std::string kind;           ///< the actor kind that runs it, e.g. "escrow"
  bool fanout = false;        ///< runs on every node hosting `kind` (function_spec::fanout)
  bool prunes_store = false;  ///< its success prunes the broker's store (function_spec::prunes_store)
};

class function_registry {
 public:
  /// An empty registry.
  function_registry() = default;

  /// The fixed functions of schema.hpp, in its order.
  static function_registry built_in();

  /// The registry of a process configured with `cfg`: built_in(), then each
  /// function `cfg` defines. (No config key defines one yet.) Never fails for a
  /// config parse_config() accepted.
  static function_registry of(const config& cfg);

  /// Adds `f`. Fails (nothing added) with a message naming it when a function of
  /// that name is registered already — a name means one function, run by one
  /// kind — or when its name or kind is empty.
  std::optional<std::string> add(registered_function f);

  /// The function named `name`, or nullptr.
  const registered_function* find(std::string_view name) const;

  /// The kind that runs `function`; "" when it is not registered.
  std::string_view kind_of(std::string_view function) const;

  /// The functions kind `kind` runs, in the order they were added (empty for an
  /// unknown kind).
  std::vector<std::string> functions_of(std::string_view kind) const;

  /// Every kind that runs a function, in the order the kinds first appear.
  std::vector<std::string> kinds() const;

  /// Every function, in the order they were added.
  const std::vector<registered_function>& all() const { return functions_; }

 private:
  std::vector<registered_function> functions_;
};

}  // namespace klynaa::protocol
