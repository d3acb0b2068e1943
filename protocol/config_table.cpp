// The config's key table (config_table.hpp): every scalar key, declared once
// with its section, the field of `config` it sets (whose initialiser is the
// default), its check and its help, like redis's static_configs[]; the known
// sections; and the helpers that read and write a key's value.
#include "protocol/config_table.hpp"

#include <cctype>
#include <cmath>
#include <sstream>

#include <toml++/toml.h>

#include "protocol/log.hpp"
#include "protocol/schema.hpp"

namespace klynaa::protocol::config_detail {
namespace {

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
  // docs/ingress-protocol.md, "Known weaknesses": an accepted id is recognised
  // as a duplicate for at least 7 days.
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
  static constexpr std::string_view names[] = {"sqlite", "postgres", "journal"};
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

const key_spec key_table[] = {
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
    KLYNAA_KEY(store, backend, backend_name,
               "sqlite | postgres | journal (a log in DATA_DIR/journal with its state in memory, docs/operations.md)"),
    KLYNAA_KEY(store, url, any_value, "postgres connection URL"),
    KLYNAA_KEY(store, synchronous, synchronous_mode,
               "sqlite, journal: full | normal (normal is not durable on power loss)"),
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


const section_spec section_table[] = {
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

}  // namespace

table_view<key_spec> keys() { return {std::begin(key_table), std::end(key_table)}; }

table_view<section_spec> sections() { return {std::begin(section_table), std::end(section_table)}; }

const std::vector<std::string_view>& function_names() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    for (const auto& f : functions()) out.push_back(f.name);
    return out;
  }();
  return names;
}

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
  for (const auto& k : keys())
    if (k.section == section && k.key == key) return &k;
  return nullptr;
}

bool is_section(std::string_view name) {
  return std::any_of(sections().begin(), sections().end(),
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

}  // namespace klynaa::protocol::config_detail
