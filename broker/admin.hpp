// The broker's admin endpoint (contract §5, §7): an HTTP server on admin.bind
// with /metrics (Prometheus text), /stats (JSON for `klynaa stats` and the
// dashboard), /dlq, /healthz and the dashboard page itself at / and /dashboard
// (broker/dashboard/index.html, open like /healthz: it holds no data). Runs its own threads (cpp-httplib); reads the broker
// only through the thread-safe callbacks it is given.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace klynaa::broker {

struct admin_handlers {
  std::function<nlohmann::json()> stats;  ///< the broker's snapshot (broker_core::stats)
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
std::string render_metrics(const nlohmann::json& stats);

}  // namespace klynaa::broker
