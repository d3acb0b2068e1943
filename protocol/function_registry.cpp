// See function_registry.hpp.
#include "protocol/function_registry.hpp"

#include <algorithm>

#include "protocol/config.hpp"
#include "protocol/schema.hpp"

namespace klynaa::protocol {

function_registry function_registry::built_in() {
  function_registry r;
  for (const auto& f : functions())
    r.functions_.push_back({std::string{f.name}, std::string{f.actor}, f.fanout, f.prunes_store});
  return r;
}

function_registry function_registry::of(const config&) {
  // The join point for functions the config defines (a later issue's tasks):
  // each is add()ed here, and a name the fixed table has is a config error.
  return built_in();
}

std::optional<std::string> function_registry::add(registered_function f) {
  if (f.name.empty()) return std::string{"a function needs a name"};
  if (f.kind.empty()) return "function " + f.name + ": needs the actor kind that runs it";
  if (const auto* known = find(f.name))
    return "function " + f.name + " is listed twice (already run by the " + known->kind + " kind)";
  functions_.push_back(std::move(f));
  return std::nullopt;
}

const registered_function* function_registry::find(std::string_view name) const {
  auto it = std::find_if(functions_.begin(), functions_.end(),
                         [&](const registered_function& f) { return f.name == name; });
  return it == functions_.end() ? nullptr : &*it;
}

std::string_view function_registry::kind_of(std::string_view function) const {
  const auto* f = find(function);
  return f ? std::string_view{f->kind} : std::string_view{};
}

std::vector<std::string> function_registry::functions_of(std::string_view kind) const {
  std::vector<std::string> out;
  for (const auto& f : functions_)
    if (f.kind == kind) out.push_back(f.name);
  return out;
}

std::vector<std::string> function_registry::kinds() const {
  std::vector<std::string> out;
  for (const auto& f : functions_)
    if (std::find(out.begin(), out.end(), f.kind) == out.end()) out.push_back(f.kind);
  return out;
}

}  // namespace klynaa::protocol
