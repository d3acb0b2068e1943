// The config loader. Every scalar key is declared once, in `keys` below (section,
// key, field of `config` — whose initialiser is the default —, check, help); the
// TOML parser, the environment overrides (KLYNAA_<SECTION>_<KEY>), the
// unknown-key errors, config_keys() and example_config() all read that table,
// like redis's static_configs[]. The three table-valued parts — [retry.FUNCTION],
// [notifications.templates.TYPE] and [[schedule]] — have a function each.
//
// Order of precedence, lowest first: defaults, the file, the legacy variables
// (DJANGO_API_URL, DJANGO_API_KEY, NOTIFICATION_SERVICE), KLYNAA_* variables.
// [retry.FUNCTION] is merged last, so a key it leaves out follows [retry] after
// the environment. An empty environment variable counts as unset.
//
// toml++ throws toml::parse_error; it is caught here, at the edge, and every
// error leaves as a config_error naming the file, the key and where it is.
#include "protocol/config.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

#include "protocol/log.hpp"

extern char** environ;

namespace klynaa::protocol {
namespace {

// ---------------------------------------------------------------------------
// Names the config refers to (contract §2).

constexpr std::string_view function_names[] = {
    "sendPickupNotification", "processEscrowRelease",    "notifyNearbyWorkers", "updateWorkerLocation",
    "generateDailyReport",    "generateWeeklyAnalytics", "cleanupData",
};

constexpr std::string_view notification_types[] = {
    "pickup_requested", "pickup_accepted", "pickup_delivered",
    "escrow_released",  "pickup_disputed", "daily_report",
};

template <size_t N>
bool contains(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

template <size_t N>
std::string join(const std::string_view (&names)[N]) {
  std::string out;
  for (auto n : names) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

// ---------------------------------------------------------------------------
// The key table.

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

std::string any_value(const value&) { return {}; }

std::string at_least_one(const value& v) {
  return std::get<int64_t>(v) >= 1 ? "" : "must be at least 1";
}

std::string not_negative(const value& v) {
  return std::get<int64_t>(v) >= 0 ? "" : "must not be negative";
}

std::string max_bytes_range(const value& v) {
  auto n = std::get<int64_t>(v);
  // 16 x max_bytes becomes ZMQ_MAXMSGSIZE; keep it far from overflowing.
  return n >= 1 && n <= (int64_t{1} << 30) ? "" : "must be between 1 and 1073741824";
}

std::string workers_range(const value& v) {
  // Jobs in flight of one kind: each is an actor, a handler and, while it
  // runs, a fiber stack (docs/reliability.md, "Jobs on fibers").
  auto n = std::get<int64_t>(v);
  return n >= 1 && n <= 100000 ? "" : "must be between 1 and 100000";
}

std::string limit_range(const value& v) {
  auto n = std::get<int64_t>(v);
  return n >= 1 && n <= 1000000 ? "" : "must be between 1 and 1000000";
}

std::string prefetch_range(const value& v) {
  auto n = std::get<int64_t>(v);
  return n >= 0 && n <= 100000 ? "" : "must be between 0 and 100000";
}

std::string hold_range(const value& v) {
  // ms arithmetic on it (ts + hold * 1000) must not overflow: at most 10 years.
  auto n = std::get<int64_t>(v);
  return n >= 0 && n <= 315360000 ? "" : "must be between 0 and 315360000 (10 years)";
}

std::string dedup_days(const value& v) {
  // Contract §1: an accepted id is recognised as a duplicate for at least 7 days.
  return std::get<int64_t>(v) >= 7 ? "" : "must be at least 7 (the contract keeps ids for 7 days)";
}

std::string lease_range(const value& v) {
  // Renewed every lease_ms / 3 over a network round trip: below a second a GC-like
  // pause or a slow commit would hand the lease over for nothing. At most a day.
  auto n = std::get<int64_t>(v);
  return n >= 1000 && n <= 86400000 ? "" : "must be between 1000 and 86400000 (ms)";
}

std::string positive_finite(const value& v) {
  double d = std::get<double>(v);
  return std::isfinite(d) && d > 0 ? "" : "must be a finite number above 0";
}

std::string not_empty(const value& v) {
  return std::get<std::string>(v).empty() ? "must not be empty" : "";
}

std::string service_name(const value& v) {
  static constexpr std::string_view names[] = {"log", "webhook", "firebase", "sns"};
  return contains(names, std::get<std::string>(v)) ? "" : "must be one of " + join(names);
}

std::string backend_name(const value& v) {
  static constexpr std::string_view names[] = {"sqlite", "postgres"};
  return contains(names, std::get<std::string>(v)) ? "" : "must be one of " + join(names);
}

std::string synchronous_mode(const value& v) {
  static constexpr std::string_view names[] = {"full", "normal"};
  return contains(names, std::get<std::string>(v)) ? "" : "must be one of " + join(names);
}

std::string log_level(const value& v) {
  log::level l;
  return log::parse_level(std::get<std::string>(v), l) ? ""
                                                       : "must be one of trace, debug, info, warning, error";
}

#define KLYNAA_KEY(SECTION, KEY, CHECK, HELP) \
  key_spec { #SECTION, #KEY, [](config& c) -> field { return &c.SECTION.KEY; }, CHECK, HELP }

const key_spec keys[] = {
    KLYNAA_KEY(ingress, bind, not_empty, "ZeroMQ endpoint the broker binds for Django's requests"),
    KLYNAA_KEY(ingress, max_bytes, max_bytes_range,
               "largest request frame in bytes; larger ones get too_large, 16 times larger drop the peer"),
    KLYNAA_KEY(ingress, curve, any_value,
               "require CURVE encryption and a client allow-list (docs/security.md)"),
    KLYNAA_KEY(ingress, curve_secret_file, any_value, "the broker's key pair (written by `klynaa keygen`)"),
    KLYNAA_KEY(ingress, curve_allow_file, any_value,
               "client public keys, Z85, one a line; re-read within a second of a change"),
    KLYNAA_KEY(ingress, curve_server_public_file, any_value,
               "clients (publish, invoke): the broker's public key file; set means connect with CURVE"),
    KLYNAA_KEY(ingress, curve_client_secret_file, any_value,
               "clients (publish, invoke): their own key pair, whose public key is in the broker's allow-list"),
    KLYNAA_KEY(ingress, max_pending, at_least_one, "pending jobs above which requests are rejected as overloaded"),
    KLYNAA_KEY(ingress, min_free_disk_mb, not_negative,
               "free space (MB) on the data dir's disk below which requests are rejected as overloaded"),
    KLYNAA_KEY(cluster, bind, not_empty, "ZeroMQ endpoint the broker binds for nodes; nodes take --broker"),
    KLYNAA_KEY(cluster, heartbeat_ms, at_least_one, "heartbeat interval between broker and nodes, both ways"),
    KLYNAA_KEY(cluster, lease_ms, at_least_one, "a dispatched job not reported within this goes back to ready"),
    KLYNAA_KEY(cluster, node_timeout_ms, at_least_one, "a node silent this long is dead; its jobs go back"),
    KLYNAA_KEY(cluster, curve, any_value,
               "CURVE on the cluster endpoint: the broker admits only nodes in curve_allow_file"),
    KLYNAA_KEY(cluster, curve_secret_file, any_value, "broker: its key pair for the cluster endpoint"),
    KLYNAA_KEY(cluster, curve_allow_file, any_value,
               "broker: node public keys, Z85, one a line; re-read within a second of a change"),
    KLYNAA_KEY(cluster, curve_server_public_file, any_value,
               "nodes: the broker's public key file; set means connect with CURVE"),
    KLYNAA_KEY(cluster, curve_client_secret_file, any_value,
               "nodes: their own key pair, whose public key is in the broker's cluster allow-list"),
    KLYNAA_KEY(admin, bind, not_empty, "host:port of /metrics and the stats the CLI reads"),
    KLYNAA_KEY(admin, token, any_value, "bearer token, required when bound beyond loopback"),
    KLYNAA_KEY(django, url, any_value, "base URL of the Django API; DJANGO_API_URL overrides"),
    KLYNAA_KEY(django, api_key, any_value, "sent as `Authorization: Api-Key ...`; DJANGO_API_KEY overrides"),
    KLYNAA_KEY(django, connect_timeout_ms, at_least_one, "connect timeout of calls to Django"),
    KLYNAA_KEY(django, timeout_ms, at_least_one, "total timeout of one call to Django"),
    KLYNAA_KEY(django, ca_file, any_value, "CA bundle for HTTPS; empty means the system's"),
    KLYNAA_KEY(notifications, service, service_name,
               "push provider: log | webhook | firebase | sns; NOTIFICATION_SERVICE overrides"),
    KLYNAA_KEY(notifications, webhook_url, any_value, "where the webhook provider POSTs each push"),
    KLYNAA_KEY(notifications, firebase_url, not_empty, "base URL of FCM HTTP v1"),
    KLYNAA_KEY(notifications, firebase_token_url, not_empty, "OAuth2 token endpoint for the service account"),
    KLYNAA_KEY(notifications, firebase_project, any_value, "FCM project id; empty means the credentials file's"),
    KLYNAA_KEY(notifications, sns_endpoint, any_value, "SNS endpoint; empty means https://sns.{region}.amazonaws.com"),
    KLYNAA_KEY(notifications, ca_file, any_value,
               "CA bundle for the push providers' HTTPS; empty means django.ca_file, and then the system's"),
    KLYNAA_KEY(escrow, hold_seconds, hold_range, "delay of the auto-release after pickup.delivered"),
    KLYNAA_KEY(geo, radius_km, positive_finite, "search radius of notifyNearbyWorkers when the event gives none"),
    KLYNAA_KEY(geo, max_workers, at_least_one, "most workers notified for one pickup"),
    KLYNAA_KEY(geo, refresh_seconds, at_least_one, "interval of full reloads of the available workers"),
    KLYNAA_KEY(retry, max_attempts, at_least_one, "attempts before a job goes to the dead-letter queue"),
    KLYNAA_KEY(retry, base_delay_ms, not_negative, "backoff before the second attempt; doubles each time"),
    KLYNAA_KEY(retry, max_delay_ms, not_negative,
               "longest backoff between two attempts (a Retry-After may ask for longer, up to 1 h)"),
    KLYNAA_KEY(scheduler, misfire_grace_seconds, not_negative,
               "a firing missed while down runs at start when at most this late"),
    KLYNAA_KEY(shutdown, grace_seconds, not_negative, "time to finish or hand back work on SIGTERM"),
    KLYNAA_KEY(circuit_breaker, failure_threshold, at_least_one,
               "transient failures in a row (no answer, 429, 5xx) that open a downstream's breaker"),
    KLYNAA_KEY(circuit_breaker, open_seconds, at_least_one, "how long an open breaker refuses calls before one probe"),
    KLYNAA_KEY(circuit_breaker, max_open_seconds, at_least_one,
               "the longest it stays open when probes keep failing (the time doubles)"),
    KLYNAA_KEY(log, level, log_level, "trace | debug | info | warning | error"),
    KLYNAA_KEY(store, backend, backend_name, "sqlite | postgres"),
    KLYNAA_KEY(store, url, any_value, "postgres connection URL"),
    KLYNAA_KEY(store, synchronous, synchronous_mode, "sqlite: full | normal (normal is not durable on power loss)"),
    KLYNAA_KEY(store, dedup_retention_days, dedup_days, "how long accepted ids and finished jobs are kept"),
    KLYNAA_KEY(store, lease_ms, lease_range,
               "postgres: how long the active broker's lease lasts unrenewed (renewed every lease_ms/3); "
               "a standby takes over after it"),
    KLYNAA_KEY(store, broker_name, any_value, "postgres: this broker's name as lease holder; empty means hostname:pid"),
    KLYNAA_KEY(node, notifier_workers, workers_range,
               "notification jobs a node holds in flight (on fibers: no thread each; the adaptive limits pace the calls)"),
    KLYNAA_KEY(node, escrow_workers, workers_range, "escrow jobs a node holds in flight (on fibers)"),
    KLYNAA_KEY(node, geo_workers, workers_range, "geo workers a node runs (they share the node's two CAF scheduler threads)"),
    KLYNAA_KEY(node, geo_prefetch, prefetch_range,
               "geo jobs a node queues beyond those running, so that the round trip to the broker is hidden"),
    KLYNAA_KEY(node, scheduler_workers, workers_range, "scheduler jobs a node holds in flight (on fibers)"),
    KLYNAA_KEY(node, limit_min, limit_range,
               "the least calls in flight the adaptive limit of one downstream and function allows"),
    KLYNAA_KEY(node, limit_max, limit_range, "the most calls in flight that adaptive limit allows"),
    KLYNAA_KEY(node, limit_initial, limit_range, "where that adaptive limit starts, before it has measured anything"),
    KLYNAA_KEY(node, downstream_max_in_flight, limit_range,
               "calls in flight to one downstream (Django, a push provider) across its functions"),
    KLYNAA_KEY(node, job_timeout_seconds, not_negative,
               "a job running longer fails (retried) and its worker is replaced; 0 means no limit"),
    KLYNAA_KEY(node, max_restarts, at_least_one,
               "worker restarts of one kind within restart_window_seconds before the node withdraws the kind"),
    KLYNAA_KEY(node, restart_window_seconds, at_least_one, "the window of max_restarts"),
};

#undef KLYNAA_KEY

/// Section comments of the example config; also the list of known sections.
struct section_spec {
  std::string_view name;
  std::string_view help;
};

const section_spec sections[] = {
    {"ingress", "Django -> broker requests (ZeroMQ + msgpack)"},
    {"cluster", "broker <-> node protocol"},
    {"admin", "metrics and the admin endpoint"},
    {"django", "the Django API the jobs call"},
    {"notifications", "push notifications"},
    {"escrow", "escrow release"},
    {"geo", "nearby-worker search"},
    {"retry", "defaults for every function; [retry.FUNCTION] overrides some keys for one function"},
    {"scheduler", "cron schedules"},
    {"shutdown", "SIGTERM and SIGINT"},
    {"circuit_breaker", "per downstream (Django, each push provider), in every node"},
    {"log", "JSON lines on standard error"},
    {"store", "durable job store"},
    {"node", "concurrency of the actors a node hosts"},
};

enum class kind { string, integer, number, boolean };

kind kind_of(const field& f) { return static_cast<kind>(f.index()); }

std::string_view kind_name(kind k) {
  switch (k) {
    case kind::string: return "string";
    case kind::integer: return "integer";
    case kind::number: return "number";
    case kind::boolean: return "boolean";
  }
  return "?";
}

std::string_view with_article(kind k) {
  switch (k) {
    case kind::string: return "a string";
    case kind::integer: return "an integer";
    case kind::number: return "a number";
    case kind::boolean: return "a boolean";
  }
  return "?";
}

const key_spec* find_key(std::string_view section, std::string_view key) {
  for (const auto& k : keys)
    if (k.section == section && k.key == key) return &k;
  return nullptr;
}

bool is_section(std::string_view name) {
  return std::any_of(std::begin(sections), std::end(sections),
                     [&](const section_spec& s) { return s.name == name; });
}

std::string env_name(const key_spec& k) {
  std::string name = "KLYNAA_";
  for (char ch : k.section) name += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  name += '_';
  for (char ch : k.key) name += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return name;
}

void assign(field f, const value& v) {
  std::visit([&](auto* target) { *target = std::get<std::remove_pointer_t<decltype(target)>>(v); }, f);
}

value read(field f) {
  return std::visit([](auto* target) -> value { return *target; }, f);
}

/// `v` as TOML: "\"log\"", "8", "5.0", "false". Strings are written as basic
/// strings, whose escapes are a superset of the ones JSON writes.
std::string to_toml(const value& v) {
  if (auto s = std::get_if<std::string>(&v))
    return nlohmann::json(*s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::ostringstream out;
  std::visit([&](const auto& x) { out << toml::value<std::decay_t<decltype(x)>>(x); }, v);
  return out.str();
}

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
  if (!contains(function_names, key))
    return ctx.source + ": unknown function [retry." + key + "]; expected one of " + join(function_names) +
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
    if (!contains(notification_types, type))
      return ctx.source + ": unknown notification type [" + label + "]; expected one of " +
             join(notification_types) + where(type_name);
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
  if (!contains(function_names, out.function))
    return who + " function: unknown function \"" + out.function + "\"; expected one of " +
           join(function_names) + where(*t.get("function"));
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
  for (const auto& k : keys) {
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

// ---------------------------------------------------------------------------

retry_policy config::retry_for(std::string_view function) const {
  auto it = retry_functions.find(std::string(function));
  return it != retry_functions.end() ? it->second : retry;
}

std::vector<schedule_entry> default_schedules() {
  std::vector<schedule_entry> out(3);
  out[0].name = "daily-report";
  out[0].cron = "0 6 * * *";
  out[0].function = "generateDailyReport";
  out[1].name = "weekly-analytics";
  out[1].cron = "0 7 * * 1";
  out[1].function = "generateWeeklyAnalytics";
  out[2].name = "cleanup";
  out[2].cron = "0 3 * * *";
  out[2].function = "cleanupData";
  return out;
}

std::vector<schedule_entry> config::effective_schedules() const {
  std::vector<schedule_entry> out = schedules;
  for (auto& d : default_schedules()) {
    bool named = std::any_of(schedules.begin(), schedules.end(),
                             [&](const schedule_entry& s) { return s.function == d.function; });
    bool name_taken = std::any_of(schedules.begin(), schedules.end(),
                                  [&](const schedule_entry& s) { return s.name == d.name; });
    if (!named) {
      if (name_taken) d.name = "default-" + d.name;  // names stay unique: they key the firings
      out.push_back(std::move(d));
    }
  }
  return out;
}

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

std::vector<config_key> config_keys() {
  config defaults;
  std::vector<config_key> out;
  for (const auto& k : keys) {
    field f = k.ref(defaults);
    out.push_back({std::string(k.section), std::string(k.key), std::string(kind_name(kind_of(f))),
                   to_toml(read(f)), std::string(k.help), env_name(k)});
  }
  return out;
}

std::string example_config() {
  std::ostringstream out;
  out << "# Klynaa Jobs configuration. Every key is shown with its default; an empty\n"
         "# file is a valid config. Any key can also be set in the environment as\n"
         "# KLYNAA_<SECTION>_<KEY>, e.g. KLYNAA_INGRESS_BIND.\n";
  auto keys_now = config_keys();
  for (const auto& s : sections) {
    out << "\n# " << s.help << "\n[" << s.name << "]\n";
    for (const auto& k : keys_now) {
      if (k.section != s.name) continue;
      out << "# " << k.help << " (" << k.type << ")\n" << k.key << " = " << k.default_value << "\n";
    }
    if (s.name == "notifications") {
      out << "# Title and body per notification type (" << join(notification_types) << "):\n"
          << "# [notifications.templates.pickup_accepted]\n"
          << "# title = \"Pickup accepted\"\n"
          << "# body = \"A worker accepted your pickup.\"\n";
    }
    if (s.name == "retry") {
      out << "# Per function (" << join(function_names) << "):\n"
          << "# [retry.processEscrowRelease]\n"
          << "# max_attempts = 20\n";
    }
  }
  out << "\n# Schedules: name (unique), cron (5 fields), function, data, timezone (IANA).\n"
         "# Without an entry for it, a function keeps its default schedule:\n";
  for (const auto& d : default_schedules()) {
    out << "#\n# [[schedule]]\n# name = \"" << d.name << "\"\n# cron = \"" << d.cron << "\"\n# function = \""
        << d.function << "\"\n# data = {}\n# timezone = \"" << d.timezone << "\"\n";
  }
  return out.str();
}

bool read_config_file(const std::string& path, std::string& text, std::string& error) {
  // POSIX rather than std::ifstream: an ifstream opens a directory without
  // complaint and then reads nothing, which looked like an empty config (the
  // defaults). Every failure names the path and says why.
  auto fail = [&](const std::string& why) {
    error = "cannot read config file " + path + ": " + why;
    return false;
  };
  auto reason = [](int e) -> std::string {
    if (e == ENOENT) return "no such file";
    if (e == EACCES) return "permission denied";
    return std::strerror(e);
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(reason(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return fail(reason(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return fail("it is a directory, not a file");
  }
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;
    } else if (errno != EINTR) {
      const int e = errno;
      ::close(fd);
      return fail(reason(e));
    }
  }
  ::close(fd);
  text = std::move(out);
  return true;
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> env;
  for (char** p = environ; p && *p; ++p) {
    std::string_view entry(*p);
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  return env;
}

}  // namespace klynaa::protocol
