// Configuration: one TOML file (docs/configuration.md) plus environment overrides. Every key
// has a default, so an empty file (or none) is a valid config. Keys are declared
// once, in the table in config_table.cpp, which the parser, `klynaa config --help`-style
// texts and docs/configuration.md all follow.
//
// Parsing is pure: the caller reads the file and passes its text and the
// environment; errors come back as values naming the key, flag or file.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace klynaa::protocol {

/// Retry policy of one function (docs/events-and-functions.md, "Failures and
/// retries"): exponential backoff with full
/// jitter, base_delay_ms doubling up to max_delay_ms, at most max_attempts attempts.
struct retry_policy {
  int64_t max_attempts = 8;
  int64_t base_delay_ms = 1000;
  int64_t max_delay_ms = 3600000;
};

/// One `[[schedule]]` entry (docs/configuration.md, "Schedules").
struct schedule_entry {
  std::string name;
  std::string cron;      ///< 5 fields, Vixie cron
  std::string function;  ///< a function name of docs/events-and-functions.md
  nlohmann::json data = nlohmann::json::object();
  std::string timezone = "UTC";  ///< IANA name
};

struct config {
  struct ingress_section {
    std::string bind = "tcp://127.0.0.1:5555";
    int64_t max_bytes = 1048576;  ///< larger frames get `too_large`; 16x drops the peer
    bool curve = false;             ///< broker: the ingress is a CURVE server with a ZAP allow list
    std::string curve_secret_file;  ///< broker: its key pair (`klynaa keygen`)
    std::string curve_allow_file;   ///< broker: client public keys, re-read when it changes
    std::string curve_server_public_file;  ///< clients: the broker's public key; set = use CURVE
    std::string curve_client_secret_file;  ///< clients: their own key pair
    int64_t max_pending = 1000000;  ///< pending jobs above which ingress answers `overloaded`
    int64_t min_free_disk_mb = 64;  ///< below this free space on the data dir: `overloaded`
  } ingress;

  struct cluster_section {
    std::string bind = "tcp://127.0.0.1:5556";
    int64_t heartbeat_ms = 1000;  ///< heartbeat interval both ways
    int64_t lease_ms = 30000;     ///< a dispatched job not reported within this goes back to ready
    int64_t node_timeout_ms = 5000;  ///< a node silent this long is dead; its jobs go back
    bool curve = false;              ///< the cluster endpoint uses CURVE (broker: server; nodes: clients)
    std::string curve_secret_file;   ///< broker: its key pair for the cluster endpoint
    std::string curve_allow_file;    ///< broker: node public keys, re-read when it changes
    std::string curve_server_public_file;  ///< nodes: the broker's public key; set = use CURVE
    std::string curve_client_secret_file;  ///< nodes: their own key pair
  } cluster;

  struct admin_section {
    std::string bind = "127.0.0.1:9464";
    std::string token;  ///< bearer token, required when bound beyond loopback
  } admin;

  struct django_section {
    std::string url;      ///< DJANGO_API_URL overrides
    std::string api_key;  ///< DJANGO_API_KEY overrides
    int64_t connect_timeout_ms = 2000;
    int64_t timeout_ms = 10000;
    std::string ca_file;  ///< CA bundle for HTTPS; empty = system default
  } django;

  struct notifications_section {
    std::string service = "log";  ///< log | webhook | firebase | sns; NOTIFICATION_SERVICE overrides
    std::string webhook_url;
    std::string firebase_url = "https://fcm.googleapis.com";
    std::string firebase_token_url = "https://oauth2.googleapis.com/token";
    std::string firebase_project;  ///< default: from the credentials file
    std::string sns_endpoint;      ///< default: https://sns.{region}.amazonaws.com
    std::string ca_file;           ///< CA bundle for the providers' HTTPS; empty = django.ca_file
    /// Template overrides: notification_type -> {"title": ..., "body": ...}
    std::map<std::string, std::map<std::string, std::string>> templates;
  } notifications;

  struct escrow_section {
    int64_t hold_seconds = 86400;
  } escrow;

  struct geo_section {
    double radius_km = 5.0;
    int64_t max_workers = 10;
    int64_t refresh_seconds = 300;
  } geo;

  retry_policy retry;                                   ///< [retry]
  std::map<std::string, retry_policy> retry_functions;  ///< [retry.FUNCTION], merged with [retry]

  struct scheduler_section {
    int64_t misfire_grace_seconds = 3600;
  } scheduler;

  struct shutdown_section {
    int64_t grace_seconds = 30;
  } shutdown;

  struct circuit_breaker_section {
    int64_t failure_threshold = 5;   ///< transient failures in a row that open a breaker
    int64_t open_seconds = 5;        ///< how long it stays open before a probe
    int64_t max_open_seconds = 60;   ///< the ceiling when probes keep failing (doubling)
  } circuit_breaker;

  struct log_section {
    std::string level = "info";  ///< trace | debug | info | warning | error
  } log;

  struct store_section {
    std::string backend = "sqlite";  ///< sqlite | postgres | journal (docs/operations.md, "The journal store")
    std::string url;                 ///< postgres connection URL
    std::string synchronous = "full";  ///< sqlite, journal: full | normal (normal is not durable on power loss)
    int64_t dedup_retention_days = 7;
    /// postgres: how long the brokers' lease (docs/deployment.md) lasts without
    /// renewal; the holder renews it every lease_ms / 3. At least 1000.
    int64_t lease_ms = 5000;
    /// postgres: this broker's name as the lease holder; empty = hostname:pid.
    std::string broker_name;
  } store;

  struct node_section {
    /// Jobs in flight per kind. Notifier, escrow and scheduler jobs run on
    /// fibers and wait for Django without a thread (docs/reliability.md, "Jobs
    /// on fibers"): the adaptive limits below, not these, decide how many calls
    /// Django and the providers get at once.
    int64_t notifier_workers = 1000;
    int64_t escrow_workers = 1000;
    /// Geo jobs are microseconds of CPU, but one worker spends most of its time
    /// waiting for the pool's next message; four keep the queue drained
    /// (docs/performance.md: 1 -> 4 workers, ~12k -> ~20k jobs/s).
    int64_t geo_workers = 4;
    /// Geo jobs a node takes beyond those running (docs/performance.md): they
    /// take microseconds, so without a queue at the node the round trip to the
    /// broker, not the work, would set their rate.
    int64_t geo_prefetch = 256;
    int64_t scheduler_workers = 16;
    /// The adaptive in-flight limit of each (downstream, function) pair
    /// (docs/reliability.md, "Adaptive in-flight limits"): it starts at
    /// limit_initial and moves within [limit_min, limit_max].
    int64_t limit_min = 1;
    int64_t limit_max = 1000;
    int64_t limit_initial = 10;
    /// Calls in flight to one downstream (Django, a push provider) across its
    /// functions, whatever their limits.
    int64_t downstream_max_in_flight = 2000;
    int64_t job_timeout_seconds = 300;    ///< a job running longer is failed and its worker replaced
    int64_t max_restarts = 10;            ///< worker restarts per kind within the window ...
    int64_t restart_window_seconds = 60;  ///< ... before the node withdraws the kind
  } node;

  std::vector<schedule_entry> schedules;  ///< [[schedule]]

  /// Provider credentials from the environment (docs/configuration.md, "Environment").
  std::map<std::string, std::string> env;

  /// The retry policy of `function`: [retry.function] keys over [retry].
  /// parse_config() stores each [retry.FUNCTION] already merged (keys it leaves
  /// out come from [retry], after environment overrides), so this returns
  /// retry_functions[function] when present and `retry` otherwise.
  retry_policy retry_for(std::string_view function) const;

  /// The schedules to run: every [[schedule]] entry, plus default_schedules()
  /// for each function that no entry names (docs/configuration.md, "Schedules").
  std::vector<schedule_entry> effective_schedules() const;
};

/// The built-in schedules (docs/configuration.md, "Schedules"): "daily-report" (generateDailyReport,
/// `0 6 * * *`), "weekly-analytics" (generateWeeklyAnalytics, `0 7 * * 1`) and
/// "cleanup" (cleanupData, `0 3 * * *`), all UTC with empty data.
std::vector<schedule_entry> default_schedules();

/// One key of the config table, for `--help` texts and docs/configuration.md.
struct config_key {
  std::string section;        ///< "geo"
  std::string key;            ///< "radius_km"
  std::string type;           ///< "string", "integer", "number" or "boolean"
  std::string default_value;  ///< as TOML: "5.0", "\"log\"", "false"
  std::string help;           ///< one sentence
  std::string env;            ///< the generic override: "KLYNAA_GEO_RADIUS_KM"
};

/// Every scalar key, in the order of the example config. ([retry.FUNCTION],
/// [notifications.templates.TYPE] and [[schedule]] are tables, not listed.)
std::vector<config_key> config_keys();

/// The process environment (environ) as a map, for parse_config().
std::map<std::string, std::string> process_environment();

struct config_error {
  std::string message;  ///< names the file and key, e.g. "klynaa.toml: [geo] radius_km: expected a number, got a string"
};

/// Parses TOML `text` read from `source` (a file name, used in messages; "" for
/// the embedded defaults), then applies the environment overrides of docs/configuration.md,
/// "Environment" (DJANGO_API_URL, DJANGO_API_KEY, NOTIFICATION_SERVICE,
/// GOOGLE_APPLICATION_CREDENTIALS, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_REGION, and KLYNAA_<SECTION>_<KEY> for any key, e.g. KLYNAA_INGRESS_BIND).
/// Unknown keys, wrong types, invalid values and FIREBASE_SERVER_KEY are errors.
std::variant<config, config_error> parse_config(std::string_view text, std::string_view source,
                                                const std::map<std::string, std::string>& env);

/// Reads the config file at `path` whole into `text`. False, with `error` naming
/// the path and the reason, when it cannot be read: missing, no permission, a
/// directory, a read error. (An empty file is read: it means the defaults.)
bool read_config_file(const std::string& path, std::string& text, std::string& error);

/// A commented example config with every key and its default (docs and
/// `klynaa config --example`).
std::string example_config();

}  // namespace klynaa::protocol
