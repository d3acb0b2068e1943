// A standby broker's endpoints (issue 10, docs/deployment.md "HA brokers on
// PostgreSQL"): while another broker holds the store's lease, this process binds
// the ingress and cluster endpoints itself and tells every peer to go elsewhere,
// so that clients and nodes given several broker endpoints move on at once
// instead of waiting for a timeout.
//
//   ingress `ping`        -> `pong` (the process is up; it is a standby)
//   any other request     -> `rejected` / `overloaded`, retry_after_ms = lease_ms / 2,
//                            message standby_message (below); nothing is stored
//   a frame that does not decode -> the same rejection the active broker sends
//   cluster READY         -> KJCP BYE with reason "standby"; other frames are ignored
//
// CURVE is honoured as broker_core does: a ZAP handler with the same allow
// lists, in this object's own ZeroMQ context.
//
// Threads: one thread owns the object (open, serve_for, close). It has its own
// zmq::context_t, terminated by close(): once close() returns, the ports are free
// for broker_core to bind.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "broker/zap.hpp"
#include "protocol/config.hpp"

namespace klynaa::broker {

/// The error message of every request a standby refuses (clients match on
/// error.code `overloaded`; this sentence is for people).
inline constexpr const char* standby_message =
    "standby broker: the active broker holds the lease; try another endpoint";

struct standby_options {
  protocol::config cfg;                    ///< ingress.max_bytes, store.lease_ms
  std::string ingress_bind;
  std::vector<std::string> cluster_binds;  ///< empty: no cluster endpoint (klynaa run)
  curve_server_options ingress_curve;
  curve_server_options cluster_curve;
};

class standby_endpoints {
 public:
  explicit standby_endpoints(standby_options o);
  ~standby_endpoints();  ///< close()
  standby_endpoints(const standby_endpoints&) = delete;
  standby_endpoints& operator=(const standby_endpoints&) = delete;

  /// Binds the endpoints. False and `err` naming the endpoint on failure.
  bool open(std::string& err);

  /// Answers whatever arrives for `d`, then returns.
  void serve_for(std::chrono::milliseconds d);

  /// {"ingress": E, "cluster": [E...]} as bound (port `*` resolved), so that the
  /// active broker can bind the very same endpoints after close().
  nlohmann::json bound_endpoints() const;

  /// Requests answered so far, by kind: {"pong": n, "standby": n, "rejected": n, "bye": n}.
  nlohmann::json counts() const;

  /// Closes the sockets (linger 0) and terminates the context. Idempotent.
  void close();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace klynaa::broker
