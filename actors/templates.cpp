// The built-in push texts and the one-pass {placeholder} substitution.
#include "actors/templates.hpp"

#include <algorithm>

#include "protocol/schema.hpp"

namespace klynaa::actors {
namespace {

bool is_placeholder(std::string_view name) {
  const auto& p = template_placeholders();
  return std::find(p.begin(), p.end(), name) != p.end();
}

bool is_type(std::string_view t) {
  const auto& types = notification_types();
  return std::find(types.begin(), types.end(), t) != types.end();
}

/// The {names} in `text` that are not placeholders.
std::vector<std::string> unknown_placeholders(std::string_view text) {
  std::vector<std::string> out;
  for (size_t open = text.find('{'); open != std::string_view::npos;
       open = text.find('{', open + 1)) {
    size_t close = text.find('}', open + 1);
    if (close == std::string_view::npos) break;
    std::string_view name = text.substr(open + 1, close - open - 1);
    bool identifier = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || c == '_';
    });
    if (identifier && !is_placeholder(name)) out.emplace_back(name);
  }
  return out;
}

}  // namespace

const std::vector<std::string>& notification_types() {
  static const std::vector<std::string> types(protocol::notification_types().begin(),
                                              protocol::notification_types().end());
  return types;
}

const std::vector<std::string>& template_placeholders() {
  static const std::vector<std::string> names{"pickup_id", "report_id", "amount", "currency",
                                              "reason"};
  return names;
}

const std::map<std::string, message_template>& templates::defaults() {
  // One text per protocol::notification_types() (templates_test checks it);
  // keep in sync with the table in templates.hpp.
  static const std::map<std::string, message_template> d{
      {"pickup_requested",
       {"New pickup nearby", "Pickup #{pickup_id} is waiting for a worker near you."}},
      {"pickup_accepted", {"Pickup accepted", "A worker accepted your pickup #{pickup_id}."}},
      {"pickup_delivered",
       {"Pickup delivered", "Your pickup #{pickup_id} was delivered. Please confirm it."}},
      {"escrow_released",
       {"Payment released",
        "{amount} {currency} for pickup #{pickup_id} has been released to you."}},
      {"pickup_disputed", {"Pickup disputed", "Pickup #{pickup_id} was disputed: {reason}"}},
      {"daily_report", {"Daily report ready", "Daily report #{report_id} is ready."}},
  };
  return d;
}

templates::templates(const std::map<std::string, std::map<std::string, std::string>>& overrides)
    : by_type_(defaults()) {
  for (const auto& [type, keys] : overrides) {
    auto it = by_type_.find(type);
    if (it == by_type_.end()) continue;
    if (auto t = keys.find("title"); t != keys.end()) it->second.title = t->second;
    if (auto b = keys.find("body"); b != keys.end()) it->second.body = b->second;
  }
}

std::optional<message_template> templates::raw(std::string_view notification_type) const {
  auto it = by_type_.find(std::string(notification_type));
  if (it == by_type_.end()) return std::nullopt;
  return it->second;
}

std::optional<message_template> templates::render(std::string_view notification_type,
                                                  const template_values& values) const {
  auto t = raw(notification_type);
  if (!t) return std::nullopt;
  return message_template{fill_template(t->title, values), fill_template(t->body, values)};
}

std::vector<std::string> templates::check_overrides(
    const std::map<std::string, std::map<std::string, std::string>>& overrides) {
  std::vector<std::string> problems;
  for (const auto& [type, keys] : overrides) {
    std::string where = "[notifications.templates." + type + "]";
    if (!is_type(type)) {
      problems.push_back(where + ": unknown notification_type \"" + type +
                         "\"; expected one of pickup_requested, pickup_accepted, "
                         "pickup_delivered, escrow_released, pickup_disputed, daily_report");
      continue;
    }
    for (const auto& [key, text] : keys) {
      if (key != "title" && key != "body") {
        problems.push_back(where + " " + key + ": unknown key; expected title or body");
        continue;
      }
      for (const auto& name : unknown_placeholders(text))
        problems.push_back(where + " " + key + ": unknown placeholder {" + name +
                           "}; expected {pickup_id}, {report_id}, {amount}, {currency} or "
                           "{reason}");
    }
  }
  return problems;
}

std::string fill_template(std::string_view text, const template_values& values) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t open = text.find('{', i);
    if (open == std::string_view::npos) break;
    size_t close = text.find('}', open + 1);
    if (close == std::string_view::npos) break;
    out.append(text.substr(i, open - i));
    std::string name(text.substr(open + 1, close - open - 1));
    auto v = values.find(name);
    if (v != values.end()) {
      out += v->second;
      i = close + 1;
    } else if (is_placeholder(name)) {
      i = close + 1;  // a known placeholder without a value renders as ""
    } else {
      out += '{';  // not ours: keep the brace and look for the next one after it
      i = open + 1;
    }
  }
  out.append(text.substr(i));
  return out;
}

}  // namespace klynaa::actors
