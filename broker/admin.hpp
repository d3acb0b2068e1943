// The broker's admin endpoint (docs/operations.md, "Watching it", "The
// dead-letter queue", "Dashboard"; docs/security.md, "The admin endpoint"): an
// HTTP server on admin.bind with /metrics (Prometheus text), /stats (JSON for
// `klynaa stats` and the dashboard), /dlq, /healthz and the dashboard page itself
// at / and /dashboard (broker/dashboard/index.html, open like /healthz: it holds
// no data). Runs its own threads (cpp-httplib); reads the broker only through
// the thread-safe callbacks it is given. The stats arrive typed (stats.hpp) and
// become JSON or Prometheus text here, at the edge.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/stats.hpp"

namespace klynaa::broker {

struct admin_handlers {
  std::function<broker_stats()> stats;  ///< the broker's snapshot (broker_core::stats), or a standby's
  /// Dead-letter queue. list: {"jobs": [...], "total": n}; show: the job with
  /// its history, or null when it is not a dead job; command: see
  /// broker_core::dlq_command.
  std::function<nlohmann::json(size_t limit)> dlq_list;
  std::function<nlohmann::json(const std::string& job_id)> dlq_show;
  std::function<nlohmann::json(const std::string& action, const std::vector<std::string>& ids, bool all)>
      dlq_command;
  /// /healthz: {HTTP status, JSON body}. Unset: always 200 {"status":"ok"}. A
  /// standby broker (docs/deployment.md) answers 503 {"status":"standby", ...}.
  /// /livez always answers 200: the process is alive, whatever its role.
  std::function<std::pair<int, nlohmann::json>()> health;
};

class admin_server {
 public:
  admin_server();
  ~admin_server();

  /// Binds `bind` ("127.0.0.1:9464"; port 0 = ephemeral). `token`: bearer token
  /// required on every request when not empty. False and `err` naming the
  /// setting when the address cannot be bound.
  bool start(const std::string& bind, const std::string& token, admin_handlers h, std::string& err);
  void stop();

  /// "127.0.0.1:9464" as bound.
  std::string address() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// Renders the Prometheus text exposition of a stats snapshot (exposed for tests).
std::string render_metrics(const broker_stats& stats);
/// The same of a /stats document (stats_from_json).
std::string render_metrics(const nlohmann::json& stats);

}  // namespace klynaa::broker
