// Parsing a config: the TOML file, then the environment. Every scalar key is
// read through the key table (config_table.hpp); the three table-valued parts —
// [retry.FUNCTION], [notifications.templates.TYPE] and [[schedule]] — have a
// function each.
//
// Order of precedence, lowest first: defaults, the file, the legacy variables
// (DJANGO_API_URL, DJANGO_API_KEY, NOTIFICATION_SERVICE), KLYNAA_* variables.
// [retry.FUNCTION] is merged last, so a key it leaves out follows [retry] after
// the environment. An empty environment variable counts as unset.
//
// toml++ throws toml::parse_error; it is caught here, at the edge, and every
// error leaves as a config_error naming the file, the key and where it is.
#include "protocol/config.hpp"

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "protocol/config_table.hpp"
#include "protocol/schema.hpp"

namespace klynaa::protocol {
namespace {

using namespace config_detail;

// ---------------------------------------------------------------------------
// Reading TOML nodes.

using error = std::optional<std::string>;

struct context {
  std::string source;  ///< "klynaa.toml", or "config" for embedded text
};

std::string_view node_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "nothing";
  }
}

/// " (line 4, column 1)" when toml++ knows where it is.
std::string where(const toml::source_region& region) {
  const auto& pos = region.begin;
  if (!pos) return {};
  return " (line " + std::to_string(pos.line) + ", column " + std::to_string(pos.column) + ")";
}

std::string where(const toml::node& n) { return where(n.source()); }
std::string where(const toml::key& k) { return where(k.source()); }

std::optional<value> from_toml(const toml::node& n, kind k) {
  switch (k) {
    case kind::string:
      if (auto s = n.as_string()) return value{s->get()};
      break;
    case kind::integer:
      if (auto i = n.as_integer()) return value{i->get()};
      break;
    case kind::number:
      if (auto f = n.as_floating_point()) return value{f->get()};
      if (auto i = n.as_integer()) return value{static_cast<double>(i->get())};  // 5 means 5.0
      break;
    case kind::boolean:
      if (auto b = n.as_boolean()) return value{b->get()};
      break;
  }
  return std::nullopt;
}

std::string show(const value& v) { return to_toml(v); }

/// Checks `v` for key `k` and stores it; `who` names the key in the message.
error set_checked(config& c, const key_spec& k, const value& v, const std::string& who) {
  std::string why = k.check(v);
  if (!why.empty()) return who + ": " + why + ", got " + show(v);
  assign(k.ref(c), v);
  return std::nullopt;
}

/// Sets a key from a TOML node. `label` is the section as written ("retry.cleanupData").
error set_from_node(config& c, const key_spec& k, const toml::node& n, const context& ctx,
                    std::string_view label) {
  std::string who = ctx.source + ": [" + std::string(label) + "] " + std::string(k.key);
  kind expected = kind_of(k.ref(c));
  auto v = from_toml(n, expected);
  if (!v) return who + ": expected " + std::string(with_article(expected)) + ", got " +
                 std::string(node_type_name(n)) + where(n);
  if (auto e = set_checked(c, k, *v, who)) return *e + where(n);
  return std::nullopt;
}

/// Sets a key from the text of environment variable `var`.
error set_from_text(config& c, const key_spec& k, const std::string& text, const std::string& var) {
  kind expected = kind_of(k.ref(c));
  std::optional<value> v;
  switch (expected) {
    case kind::string: v = text; break;
    case kind::integer: {
      int64_t n = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
      if (ec == std::errc() && end == text.data() + text.size()) v = n;
      break;
    }
    case kind::number: {
      char* end = nullptr;
      errno = 0;
      double d = std::strtod(text.c_str(), &end);
      if (errno == 0 && end == text.c_str() + text.size() && std::isfinite(d)) v = d;
      break;
    }
    case kind::boolean:
      if (text == "true" || text == "1") v = true;
      if (text == "false" || text == "0") v = false;
      break;
  }
  if (!v) return var + ": expected " + std::string(with_article(expected)) + " for [" +
                 std::string(k.section) + "] " + std::string(k.key) + ", got \"" + text + "\"";
  return set_checked(c, k, *v, var + " ([" + std::string(k.section) + "] " + std::string(k.key) + ")");
}

/// What a section does with a key that is not in the key table; nullptr: error.
using extra_fn = error (*)(config&, const toml::key& key, const toml::node&, const context&,
                           std::vector<std::pair<std::string, const toml::table*>>& deferred);

error unknown_key(const context& ctx, std::string_view label, const toml::key& key) {
  return ctx.source + ": unknown key [" + std::string(label) + "] " + std::string(key.str()) + where(key);
}

error parse_section(config& c, std::string_view section, std::string_view label, const toml::table& t,
                    const context& ctx, extra_fn extra,
                    std::vector<std::pair<std::string, const toml::table*>>& deferred) {
  for (auto&& [name, node] : t) {
    std::string key(name.str());
    if (const key_spec* k = find_key(section, key)) {
      if (auto e = set_from_node(c, *k, node, ctx, label)) return e;
    } else if (extra) {
      if (auto e = extra(c, name, node, ctx, deferred)) return e;
    } else {
      return unknown_key(ctx, label, name);
    }
  }
  return std::nullopt;
}

/// [retry.FUNCTION]: checked now, applied by apply_retry_overrides() once
/// [retry] is final.
error retry_extra(config&, const toml::key& name, const toml::node& n, const context& ctx,
                  std::vector<std::pair<std::string, const toml::table*>>& deferred) {
  std::string key(name.str());
  if (!n.is_table()) return unknown_key(ctx, "retry", name);
  if (!contains(function_names(), key))
    return ctx.source + ": unknown function [retry." + key + "]; expected one of " + join(function_names()) +
           where(name);
  deferred.emplace_back(key, n.as_table());
  return std::nullopt;
}

/// [notifications.templates.TYPE] with `title` and `body`.
error notifications_extra(config& c, const toml::key& key, const toml::node& n, const context& ctx,
                          std::vector<std::pair<std::string, const toml::table*>>&) {
  if (key.str() != "templates") return unknown_key(ctx, "notifications", key);
  const auto* types = n.as_table();
  if (!types) return ctx.source + ": [notifications] templates: expected a table, got " +
                     std::string(node_type_name(n)) + where(n);
  for (auto&& [type_name, type_node] : *types) {
    std::string type(type_name.str());
    std::string label = "notifications.templates." + type;
    if (!contains(notification_types(), type))
      return ctx.source + ": unknown notification type [" + label + "]; expected one of " +
             join(notification_types()) + where(type_name);
    const auto* fields = type_node.as_table();
    if (!fields) return ctx.source + ": [" + label + "]: expected a table, got " +
                        std::string(node_type_name(type_node)) + where(type_node);
    auto& tmpl = c.notifications.templates[type];
    for (auto&& [field_name, field_node] : *fields) {
      std::string f(field_name.str());
      if (f != "title" && f != "body") return unknown_key(ctx, label, field_name);
      const auto* s = field_node.as_string();
      if (!s) return ctx.source + ": [" + label + "] " + f + ": expected a string, got " +
                     std::string(node_type_name(field_node)) + where(field_node);
      tmpl[f] = s->get();
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// [[schedule]]

/// Any TOML value as JSON; dates and times become their TOML text.
std::optional<nlohmann::json> to_json(const toml::node& n) {
  if (auto t = n.as_table()) {
    auto out = nlohmann::json::object();
    for (auto&& [k, v] : *t) {
      auto j = to_json(v);
      if (!j) return std::nullopt;
      out[std::string(k.str())] = std::move(*j);
    }
    return out;
  }
  if (auto a = n.as_array()) {
    auto out = nlohmann::json::array();
    for (auto&& v : *a) {
      auto j = to_json(v);
      if (!j) return std::nullopt;
      out.push_back(std::move(*j));
    }
    return out;
  }
  if (auto s = n.as_string()) return nlohmann::json(s->get());
  if (auto i = n.as_integer()) return nlohmann::json(i->get());
  if (auto f = n.as_floating_point()) {
    if (!std::isfinite(f->get())) return std::nullopt;  // JSON has no inf or nan
    return nlohmann::json(f->get());
  }
  if (auto b = n.as_boolean()) return nlohmann::json(b->get());
  std::ostringstream text;
  if (auto d = n.as_date()) text << *d;
  if (auto t = n.as_time()) text << *t;
  if (auto dt = n.as_date_time()) text << *dt;
  return nlohmann::json(text.str());
}

size_t count_fields(std::string_view text) {
  size_t n = 0;
  bool in_field = false;
  for (char ch : text) {
    bool space = std::isspace(static_cast<unsigned char>(ch)) != 0;
    if (!space && !in_field) ++n;
    in_field = !space;
  }
  return n;
}

error require_string(const toml::table& t, const char* key, const std::string& who, const toml::node& entry,
                     std::string& out) {
  const toml::node* n = t.get(key);
  if (!n) return who + ": missing " + key + where(entry);
  const auto* s = n->as_string();
  if (!s) return who + " " + key + ": expected a string, got " + std::string(node_type_name(*n)) + where(*n);
  if (s->get().empty()) return who + " " + key + ": must not be empty" + where(*n);
  out = s->get();
  return std::nullopt;
}

error parse_schedule(const toml::table& t, size_t index, const context& ctx, schedule_entry& out) {
  std::string who = ctx.source + ": [[schedule]] #" + std::to_string(index + 1);
  if (const auto* name = t.get_as<std::string>("name")) who += " (" + name->get() + ")";
  for (auto&& [k, v] : t) {
    static constexpr std::string_view allowed[] = {"name", "cron", "function", "data", "timezone"};
    if (!contains(allowed, k.str())) return who + ": unknown key " + std::string(k.str()) + where(k);
  }
  if (auto e = require_string(t, "name", who, t, out.name)) return e;
  if (auto e = require_string(t, "cron", who, t, out.cron)) return e;
  if (count_fields(out.cron) != 5)
    return who + " cron: expected 5 fields (minute hour day-of-month month day-of-week), got \"" + out.cron +
           "\"" + where(*t.get("cron"));
  if (auto e = require_string(t, "function", who, t, out.function)) return e;
  if (!contains(function_names(), out.function))
    return who + " function: unknown function \"" + out.function + "\"; expected one of " +
           join(function_names()) + where(*t.get("function"));
  if (const toml::node* data = t.get("data")) {
    if (!data->is_table())
      return who + " data: expected a table, got " + std::string(node_type_name(*data)) + where(*data);
    auto j = to_json(*data);
    if (!j) return who + " data: inf and nan cannot be sent as JSON" + where(*data);
    out.data = std::move(*j);
  }
  if (t.get("timezone")) {
    if (auto e = require_string(t, "timezone", who, t, out.timezone)) return e;
  }
  return std::nullopt;
}

error parse_schedules(config& c, const toml::node& n, const context& ctx) {
  const auto* entries = n.as_array();
  if (!entries || (!entries->empty() && !entries->is_array_of_tables()))
    return ctx.source + ": schedule: expected an array of tables, written [[schedule]]" + where(n);
  std::set<std::string> names;
  for (size_t i = 0; i < entries->size(); ++i) {
    schedule_entry entry;
    if (auto e = parse_schedule(*entries->get(i)->as_table(), i, ctx, entry)) return e;
    if (!names.insert(entry.name).second)
      return ctx.source + ": [[schedule]] #" + std::to_string(i + 1) + ": duplicate name \"" + entry.name +
             "\"" + where(*entries->get(i));
    c.schedules.push_back(std::move(entry));
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// The whole file, then the environment.

error parse_document(config& c, const toml::table& doc, const context& ctx,
                     std::vector<std::pair<std::string, const toml::table*>>& deferred) {
  for (auto&& [name, node] : doc) {
    std::string section(name.str());
    if (section == "schedule") {
      if (auto e = parse_schedules(c, node, ctx)) return e;
    } else if (is_section(section)) {
      const auto* t = node.as_table();
      if (!t) return ctx.source + ": [" + section + "]: expected a table, got " +
                     std::string(node_type_name(node)) + where(node);
      extra_fn extra = section == "retry" ? retry_extra : section == "notifications" ? notifications_extra : nullptr;
      if (auto e = parse_section(c, section, section, *t, ctx, extra, deferred)) return e;
    } else if (node.is_table()) {
      return ctx.source + ": unknown section [" + section + "]" + where(node);
    } else {
      return ctx.source + ": unknown key " + section + " outside any section" + where(name);
    }
  }
  return std::nullopt;
}

const std::string* env_value(const std::map<std::string, std::string>& env, const char* name) {
  auto it = env.find(name);
  return it != env.end() && !it->second.empty() ? &it->second : nullptr;
}

error apply_env(config& c, const std::map<std::string, std::string>& env) {
  if (env_value(env, "FIREBASE_SERVER_KEY"))
    return std::string(
        "FIREBASE_SERVER_KEY is set, but Google has shut down the legacy FCM API it belongs to: unset it, "
        "and for notifications.service = \"firebase\" set GOOGLE_APPLICATION_CREDENTIALS to a service "
        "account's JSON key file (FCM HTTP v1)");
  struct legacy {
    const char* var;
    std::string_view section, key;
  };
  static constexpr legacy legacy_vars[] = {
      {"DJANGO_API_URL", "django", "url"},
      {"DJANGO_API_KEY", "django", "api_key"},
      {"NOTIFICATION_SERVICE", "notifications", "service"},
  };
  for (const auto& l : legacy_vars)
    if (const auto* text = env_value(env, l.var))
      if (auto e = set_from_text(c, *find_key(l.section, l.key), *text, l.var)) return e;
  for (const auto& k : keys()) {
    std::string var = env_name(k);
    if (const auto* text = env_value(env, var.c_str()))
      if (auto e = set_from_text(c, k, *text, var)) return e;
  }
  for (const char* var : {"GOOGLE_APPLICATION_CREDENTIALS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_SESSION_TOKEN"})
    if (const auto* text = env_value(env, var)) c.env[var] = *text;
  return std::nullopt;
}

error apply_retry_overrides(config& c, const std::vector<std::pair<std::string, const toml::table*>>& deferred,
                            const context& ctx) {
  for (const auto& [function, table] : deferred) {
    config scratch;
    scratch.retry = c.retry;  // keys the override leaves out come from [retry]
    std::vector<std::pair<std::string, const toml::table*>> none;
    if (auto e = parse_section(scratch, "retry", "retry." + function, *table, ctx, nullptr, none)) return e;
    c.retry_functions[function] = scratch.retry;
  }
  return std::nullopt;
}

/// Rules between keys, checked once everything is applied.
error check_consistency(const config& c, const context& ctx) {
  auto check_retry = [&](const retry_policy& p, const std::string& label) -> error {
    if (p.base_delay_ms > p.max_delay_ms)
      return ctx.source + ": [" + label + "] base_delay_ms (" + std::to_string(p.base_delay_ms) +
             ") must not exceed max_delay_ms (" + std::to_string(p.max_delay_ms) + ")";
    return std::nullopt;
  };
  if (auto e = check_retry(c.retry, "retry")) return e;
  for (const auto& [function, policy] : c.retry_functions)
    if (auto e = check_retry(policy, "retry." + function)) return e;
  if (c.store.backend == "postgres" && c.store.url.empty())
    return ctx.source + ": [store] url: must be set when backend = \"postgres\" "
           "(a libpq URL, e.g. postgresql://klynaa@db-host/klynaa)";
  if (c.node.limit_min > c.node.limit_initial || c.node.limit_initial > c.node.limit_max)
    return ctx.source + ": [node] limit_min (" + std::to_string(c.node.limit_min) + ") <= limit_initial (" +
           std::to_string(c.node.limit_initial) + ") <= limit_max (" + std::to_string(c.node.limit_max) +
           ") must hold";
  if (c.cluster.node_timeout_ms <= c.cluster.heartbeat_ms)
    return ctx.source + ": [cluster] node_timeout_ms (" + std::to_string(c.cluster.node_timeout_ms) +
           ") must exceed heartbeat_ms (" + std::to_string(c.cluster.heartbeat_ms) +
           "), or live nodes are declared dead between heartbeats";
  return std::nullopt;
}

}  // namespace

std::variant<config, config_error> parse_config(std::string_view text, std::string_view source,
                                                const std::map<std::string, std::string>& env) {
  context ctx{source.empty() ? std::string("config") : std::string(source)};
  try {
    config c;
    toml::table doc;
    try {
      doc = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
      const auto& pos = e.source().begin;
      return config_error{ctx.source + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) +
                          ": invalid TOML: " + std::string(e.description())};
    }
    std::vector<std::pair<std::string, const toml::table*>> deferred;
    if (auto e = parse_document(c, doc, ctx, deferred)) return config_error{*e};
    if (auto e = apply_env(c, env)) return config_error{*e};
    if (auto e = apply_retry_overrides(c, deferred, ctx)) return config_error{*e};
    if (auto e = check_consistency(c, ctx)) return config_error{*e};
    return c;
  } catch (const std::exception& e) {
    return config_error{ctx.source + ": " + e.what()};
  }
}

}  // namespace klynaa::protocol
