// The broker's stats as a typed value: what the loop publishes every 250 ms
// (timers.hpp), what /stats and /metrics serve (admin.hpp), what `klynaa stats`
// prints (cli/stats.cpp) and what the dashboard draws. JSON only at the edges:
// to_json() is the /stats document (its keys are documented in
// docs/operations.md, "Watching it", and read by tests and the dashboard) and
// stats_from_json() reads it back on the client's side.
//
// stats_counters holds the loop's running counts between two snapshots.
// Neither type is thread-safe; broker_core::stats() hands out a copy.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/ack_timeline.hpp"

namespace klynaa::broker {

/// Jobs of one function: live ones per state ("ready", "running", ...; a state
/// once seen stays, at 0) and ended attempts per outcome ("ok", "retry", "dead").
struct function_stats {
  std::map<std::string, int64_t> states;
  std::map<std::string, int64_t> outcomes;
};

/// Durations of job attempts for one function, as Prometheus histogram buckets
/// (seconds; `buckets[i]` counts those <= bounds[i] and > bounds[i-1]).
struct duration_stats {
  std::vector<double> bounds;
  std::vector<int64_t> buckets;
  double sum = 0;
  int64_t count = 0;
};

/// A connected node as the broker sees it.
struct node_view {
  std::string name;
  std::vector<std::string> kinds;
  int64_t credit = 0;
  int64_t running = 0;
  int64_t last_heartbeat_ms = 0;
  nlohmann::json stats = nlohmann::json::object();  ///< the node's own NODE_STATS, as it sent it
  std::map<std::string, std::string> withdrawn;     ///< kind -> the node's reason
};

/// A failed attempt (the newest 50 are kept).
struct failure_entry {
  int64_t ts_ms = 0;
  std::string job_id, function;
  int64_t attempt = 0;
  std::string node, outcome, code, message;
};

/// A job waiting to retry (the soonest 20).
struct retry_entry {
  std::string job_id, function;
  int64_t attempts = 0;
  int64_t next_run_ms = 0;
};

/// Totals every 5 s over the last 10 minutes, for the dashboard's charts.
struct history_point {
  int64_t ts_ms = 0, ok = 0, retry = 0, dead = 0, accepted = 0, pending = 0;
};

/// Group commits so far: how many, what they carried, the writer's time.
struct store_totals {
  int64_t commits = 0, requests = 0, updates = 0, commit_us = 0;
};

/// Cluster frames and the messages they carried (a BATCH carries many), both ways.
struct link_totals {
  int64_t frames_sent = 0, messages_sent = 0, frames_received = 0, messages_received = 0;
};

struct broker_stats {
  int64_t ts_ms = 0;
  std::string version, commit;  ///< of the running binary
  int64_t pending = 0;          ///< unfinished jobs, children not yet committed included
  std::map<std::string, function_stats> functions;
  std::vector<node_view> nodes;
  std::map<std::string, int64_t> ingress;  ///< reply status -> requests
  int64_t dead_total = 0;    ///< jobs that went dead since start
  int64_t dead_letters = 0;  ///< jobs in the dead-letter queue now, as stored
  std::map<std::string, duration_stats> durations;
  std::vector<failure_entry> recent_failures;  ///< oldest first
  std::vector<retry_entry> retrying;           ///< soonest first
  std::vector<history_point> history;          ///< oldest first
  bool draining = false;
  int64_t disk_free_mb = -1;
  store_totals store;
  link_totals cluster_link;
  /// Accepted publishes since start, stage by stage (ack_timeline.hpp).
  std::map<std::string, stage_summary> ack_stages;
  /// PostgreSQL only (docs/deployment.md, "HA brokers on PostgreSQL"): "active"
  /// or "standby", and the lease holder's name. A standby has no other stats:
  /// its document is {role, broker_name, lease_ms, message}.
  std::optional<std::string> role;
  std::optional<std::string> broker_name;
  int64_t lease_ms = 0;     ///< standby only
  std::string message;      ///< standby only
};

/// The /stats document.
nlohmann::json to_json(const broker_stats& s);

/// Reads a /stats document; missing or mistyped keys keep their defaults.
broker_stats stats_from_json(const nlohmann::json& j);

/// The broker loop's counters between snapshots.
struct stats_counters {
  /// Duration buckets of one function (seconds).
  struct histogram {
    static constexpr double bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    int64_t counts[sizeof(bounds) / sizeof(bounds[0])] = {};
    double sum = 0;
    int64_t count = 0;
    void observe(double seconds);
  };

  std::map<std::string, int64_t> ingress;                        ///< reply status -> n
  std::map<std::string, std::map<std::string, int64_t>> outcomes; ///< function -> outcome -> n
  std::map<std::string, histogram> durations;
  std::vector<failure_entry> recent_failures;  ///< newest last, at most max_failures
  std::vector<history_point> history;          ///< at most max_history
  int64_t dead_total = 0;
  store_totals store;

  static constexpr size_t max_failures = 50;
  static constexpr size_t max_history = 120;

  void note_failure(failure_entry f);
  /// Appends a history point of the outcome totals at `now`, `pending` jobs.
  void add_history(int64_t now, int64_t pending);
  /// The durations in their published form.
  std::map<std::string, duration_stats> duration_snapshot() const;
};

}  // namespace klynaa::broker
