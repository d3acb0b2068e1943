// Running a broker process (`klynaa broker`, `klynaa run`): the store, the
// PostgreSQL lease and standby (docs/deployment.md, "HA brokers on PostgreSQL",
// "What a standby does", "How failover works"), the admin endpoint, the loop
// (core.hpp), the drain on signals (docs/operations.md, "Signals") and the data
// dir's broker.json. cli/serve.cpp parses flags and config and calls serve().
//
// With store.backend = "postgres" the process starts as a standby
// (standby.hpp): it answers on every endpoint, the admin one included, and tries
// to take the lease every store.lease_ms / 3. Once it holds it, the store is
// fenced with the lease's token, a lease_keeper (lease_keeper.hpp) renews it,
// and the broker binds exactly what the standby had bound. Losing the lease is
// fail-stop: exit 3 at once (a standby may be active already).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <zmq.hpp>

#include "broker/core.hpp"
#include "broker/store.hpp"
#include "broker/zap.hpp"
#include "protocol/config.hpp"

namespace klynaa::broker {

/// One node in the broker's process (`klynaa run`), over inproc.
struct colocated_node {
  std::function<void(zmq::context_t& ctx, const std::string& endpoint)> start;
  /// Drains: finishes or hands back its jobs while the broker still takes results.
  std::function<void()> stop;
};

struct serve_options {
  protocol::config cfg;
  std::string data_dir;
  std::string ingress_bind;
  std::string cluster_bind;  ///< unused with a colocated node (inproc)
  curve_server_options ingress_curve;
  curve_server_options cluster_curve;  ///< unused with a colocated node
  std::optional<colocated_node> node;
  /// The process's signals: 0 running, 1 drain (first SIGTERM/SIGINT), 2 stop
  /// now (second). serve() sets it to 2 when the loop fails.
  std::atomic<int>* signals = nullptr;
  /// Installs the signal handlers: called once the broker answers (a standby
  /// from the start, an active broker once its loop is open).
  std::function<void()> install_signals;
};

/// Holds the data dir's broker.lock: one broker per data dir (a second one
/// would corrupt the queue's order). False and `err` when another holds it.
bool lock_data_dir(const std::string& data_dir, std::string& err);

/// The store of store.backend: SQLite in the data dir, or PostgreSQL at
/// store.url (pg_store.hpp). `read_only`: the admin's dead-letter reader, a
/// second instance. nullptr and `err` on failure.
std::unique_ptr<store> open_store(const protocol::config::store_section& cfg, const std::string& data_dir,
                                  bool read_only, store_error& err);

/// Runs the broker until a signal ends it. Errors are printed to stderr as
/// "klynaa: ...". Returns the exit code: 0 after a drain, 1 when the store or
/// an endpoint cannot be opened or the loop failed; exits 3 on a lost lease.
int serve(serve_options o);

}  // namespace klynaa::broker
