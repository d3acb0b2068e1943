// The broker: one loop thread that owns the ingress ROUTER
// (docs/ingress-protocol.md), the cluster ROUTER (docs/cluster-protocol.md), the live queue and the invoke
// waiters; a writer thread that commits batches to the store (writer.hpp).
//
// Message order, in one place:
//   request -> validated -> added to the open batch -> batch committed
//   -> reply `accepted` and jobs enter the live queue -> dispatched to a node
//   -> `done` -> state change added to the open batch -> committed
//   -> invoke waiters answered.
// Nothing is acknowledged, and no job runs, before the commit that holds it.
//
// The loop only wires the sockets to the broker's parts (core_impl.hpp lists
// them; docs/design.md, "The broker's parts", draws them).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "broker/clock.hpp"
#include "broker/stats.hpp"
#include "broker/store.hpp"
#include "broker/zap.hpp"
#include "protocol/config.hpp"

namespace klynaa::broker {

/// Where the broker listens. Endpoints may use port `*`; the bound ones are
/// reported by bound_endpoints().
struct broker_options {
  protocol::config cfg;
  std::string ingress_bind;                ///< default cfg.ingress.bind
  std::vector<std::string> cluster_binds;  ///< e.g. {"inproc://klynaa-cluster"}
  std::string data_dir = "klynaa-data";
  /// CURVE with a ZAP allow list (broker/zap.hpp, docs/security.md); off by default.
  /// The cluster's applies to its tcp:// and ipc:// binds (inproc has no handshake).
  curve_server_options ingress_curve;
  curve_server_options cluster_curve;
  /// The loop's clock (clock.hpp): every timer, lease, retry and stat reads it.
  clock_fn clock = wall_ms;
};

/// Lifecycle requested from outside (signal handlers), read by the loop.
enum class phase : int {
  running = 0,
  draining = 1,  ///< answer `shutting_down`, dispatch nothing new, wait for in-flight jobs
  stopping = 2,  ///< flush the last batch, say bye to nodes and return
};

class broker_core {
 public:
  broker_core(zmq::context_t& ctx, broker_options opts, std::unique_ptr<store> st);
  ~broker_core();
  broker_core(const broker_core&) = delete;
  broker_core& operator=(const broker_core&) = delete;

  /// Binds the sockets and loads the unfinished jobs. False and `err` (a sentence
  /// naming the endpoint or file) on failure.
  bool open(std::string& err);

  /// Runs the loop in the calling thread until `ph` reaches `stopping` (or the
  /// drain ends after `draining` + grace). Returns the process exit code.
  int run(const std::atomic<int>& ph);

  /// Endpoints actually bound: {"ingress": ..., "cluster": [...]}.
  nlohmann::json bound_endpoints() const;

  /// Thread-safe copy of the latest stats (stats.hpp; docs/operations.md),
  /// refreshed by the loop every 250 ms; dead_letters at once after each commit.
  broker_stats stats() const;

  /// Thread-safe (the admin endpoint): `action` "replay" or "purge" of the dead
  /// jobs `ids`, or of all of them. Runs through the loop and the store's next
  /// commit; waits for it up to `timeout`. Returns {"replayed"|"purged": [ids],
  /// "missing": [ids not in the dead-letter queue], "more": bool} or {"error": text}.
  nlohmann::json dlq_command(const std::string& action, const std::vector<std::string>& ids, bool all,
                             std::chrono::milliseconds timeout);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace klynaa::broker
