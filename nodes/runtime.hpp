// The runtime of a node: it connects to the broker over the cluster protocol
// (docs/cluster-protocol.md), registers the actor kinds it hosts, runs the jobs
// the broker leases to it on their kinds' handlers (nodes/job.hpp) and reports
// each attempt back. No CAF in this header: callers (cli/, tests) see a plain
// object with start() and stop().
//
// Threads (see runtime.cpp for the message order):
//   - the I/O thread owns the DEALER socket to the broker (nodes/io_thread.hpp);
//   - a CAF actor system with 2 scheduler threads runs the gateway (protocol
//     logic, nodes/gateway.hpp) and one pool per kind (nodes/pool.hpp);
//   - each worker of a pool is a detached actor with its own thread, because
//     handlers block (HTTP calls); except the workers of a kind that never
//     blocks (geo, actor_kind_spec::blocking), which share the scheduler's threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "nodes/job.hpp"

namespace klynaa::nodes {

struct node_options {
  /// Where the broker's ROUTER is: "inproc://klynaa-cluster" (single-node mode,
  /// same zmq context) or e.g. "tcp://127.0.0.1:5556".
  std::string broker_endpoint = "inproc://klynaa-cluster";
  /// CURVE towards the broker (cluster.curve_*, docs/security.md): all three
  /// Z85 keys, or none for a plain connection (the default; inproc never needs it).
  std::string curve_server_key;  ///< the broker's public key
  std::string curve_public_key;  ///< this node's, listed in the broker's cluster allow file
  std::string curve_secret_key;
  /// The node's name, unique in the cluster (logs, READY, node_stats).
  std::string name = "node";
  /// The actor kinds this node hosts. Each needs workers >= 1 and make_handler.
  std::vector<actor_kind_spec> kinds;
  /// stop(): how long in-flight jobs may take to finish before they are handed
  /// back to the broker in BYE.
  int64_t shutdown_grace_ms = 30000;
  /// Until a WELCOME arrives, READY is re-sent this often.
  int64_t register_retry_ms = 1000;      ///< first wait for WELCOME, doubling per attempt
  int64_t register_retry_max_ms = 5000;  ///< ceiling of that backoff
  /// How often node_stats goes to the broker while registered; 0 = never.
  int64_t stats_interval_ms = 5000;
  /// Called on the gateway's thread for each node_stats: a JSON object merged
  /// under "extra" (the actors' downstream counters). Must not throw or block.
  std::function<nlohmann::json()> extra_stats;
  /// Called on the gateway's thread when a job ends and on its ticks: true
  /// while jobs the node took now would only wait inside it (its calls to
  /// downstreams wait for their limits). The slots jobs free are then not
  /// granted to the broker again until it is false, so the jobs wait in the
  /// broker, where any node can take them (docs/reliability.md, "Credits follow
  /// the limits"). Must be cheap, not throw and not block. Empty: never.
  std::function<bool()> backed_up;
  /// With backed_up: READY grants this many slots (0 = all), and the rest
  /// follow while the node is not backed up: one more with each DONE (the
  /// grant doubles per round of jobs), and initial_credit more on each of the
  /// gateway's ticks while it holds no job.
  int64_t initial_credit = 0;
};

class node_runtime {
 public:
  /// Keeps `ctx` (which must outlive this object) and the options; starts
  /// nothing. Throws std::invalid_argument when a kind has no workers or no
  /// make_handler, or when two kinds claim the same function.
  node_runtime(zmq::context_t& ctx, node_options opts);

  /// Spawns the actor system, the gateway, the pools and their workers, and the
  /// I/O thread, which connects to the broker; the gateway then sends READY.
  /// Returns immediately. Calling it twice, or after stop(), does nothing.
  /// Throws zmq::error_t when the broker endpoint is invalid.
  void start();

  /// Graceful stop: takes no new jobs, hands queued ones back, lets running
  /// jobs finish within shutdown_grace_ms (their DONE is sent), then says BYE
  /// listing every job it hands back (queued, or still running after the
  /// grace), and joins everything. A handler still stuck after the grace is
  /// abandoned: its thread ends on its own and its result is dropped.
  /// Idempotent; returns within about grace + 3 s whatever the handlers do.
  /// Not thread-safe: call it from one thread (the one that called start()).
  void stop();

  /// Calls stop().
  ~node_runtime();

  node_runtime(const node_runtime&) = delete;
  node_runtime& operator=(const node_runtime&) = delete;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace klynaa::nodes
