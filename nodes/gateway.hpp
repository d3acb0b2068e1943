// The gateway: the node's side of the cluster protocol (docs/cluster-protocol.md)
// as one event-based CAF actor. It
//   - registers: READY{node, kinds, credit} until a WELCOME arrives, and again
//     after the broker says BYE or stays silent for 3 heartbeats (a restart);
//   - sends a HEARTBEAT whenever it has sent nothing for heartbeat_ms, and
//     node_stats every stats_interval_ms; a HEARTBEAT lists the leases of the
//     jobs it holds, at least every lease_ms / 3, so the broker keeps them;
//   - routes each JOB to the pool of its function's kind, and sends each DONE
//     with credit 1, the slot it frees. With backed_up set, credit follows what
//     the node can start: READY grants initial_credit, and each DONE one more
//     slot while it is not backed up (a tick grants initial_credit more when
//     it holds no job); while it is, the slots jobs free are withheld;
//   - on stop, hands queued jobs back, waits for running ones up to the grace,
//     and says BYE listing every job it hands back.
// Outgoing frames go through a PUSH socket it owns (an event-based actor runs
// on one thread at a time) to the I/O thread's PULL, which sends them.
//
// Messages (its typed handle, gateway_actor in handles.hpp, lists them):
//   (frame_atom, frame)            a frame from the broker (the I/O thread)
//   (done_atom, lease, frame, code) a DONE from a pool, with its outcome_code() (wire.hpp)
//   (handback_atom, lease, job_id) a queued job a draining pool did not run
//   (stop_atom, grace_ms) -> ok_atom, once BYE is in the PUSH socket. Idempotent.
//   (tick_atom)                    its own timer
//   (flush_atom)                   its own: send the queued DONEs
#pragma once

#include <functional>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include <caf/fwd.hpp>
#include <caf/typed_response_promise.hpp>
#include <zmq.hpp>

#include "nodes/handles.hpp"
#include "nodes/job.hpp"

namespace klynaa::nodes {

struct gateway_config {
  std::string node;
  std::vector<actor_kind_spec> kinds;
  zmq::context_t* ctx = nullptr;
  std::string out_endpoint;  ///< the I/O thread's PULL (io_thread::out_endpoint)
  /// The broker's cluster endpoint, or a comma-separated list of them (standby
  /// brokers): the I/O thread connects to one at a time and the gateway moves
  /// on to the next when READY goes unanswered, the broker says BYE, or it
  /// falls silent.
  std::string broker_endpoint;
  int64_t register_retry_ms = 1000;      ///< first wait for a WELCOME; doubles per attempt
  int64_t register_retry_max_ms = 5000;  ///< the backoff's ceiling
  int64_t stats_interval_ms = 5000;
  std::shared_ptr<std::atomic<int>> busy;  ///< see worker_config::busy
  std::function<nlohmann::json()> extra_stats;  ///< see node_options::extra_stats
  std::function<bool()> backed_up;               ///< see node_options::backed_up
  int64_t initial_credit = 0;                    ///< see node_options::initial_credit
};

struct gateway_state {
  /// Its times come from the actor system's clock (self->clock().now()): the
  /// steady clock, or the deterministic one of CAF's test coordinator in tests.
  using clock = std::chrono::steady_clock;
  static inline const char* name = "gateway";

  /// The broker session as this node sees it.
  enum class session { registering, registered };
  /// The node's own life.
  enum class life { running, stopping, stopped };

  struct held_job {
    std::string job_id;
    std::string function;
  };
  struct counts {
    int64_t ok = 0, retry = 0, dead = 0;
  };

  gateway_config cfg;
  std::unique_ptr<zmq::socket_t> push;
  session sess = session::registering;
  life lf = life::running;
  int64_t heartbeat_ms = 1000;  ///< from WELCOME
  int64_t lease_ms = 30000;     ///< from WELCOME
  int64_t capacity = 0;         ///< sum of workers over kinds
  clock::time_point last_rx, last_tx, last_ready, last_stats, stop_deadline;
  clock::time_point last_renew;  ///< the last HEARTBEAT that listed the held leases
  int64_t ready_attempts = 0;  ///< READYs sent without a WELCOME since the last one
  int64_t ready_wait_ms = 0;   ///< when the next READY is due after last_ready
  std::vector<std::string> endpoints;  ///< broker_endpoint split; the I/O thread's order
  size_t endpoint_index = 0;           ///< the one the I/O thread is connected to
  std::map<std::string, pool_actor> pool_of;  ///< function -> pool of its kind
  std::vector<pool_actor> pools;
  std::map<int64_t, held_job> held;           ///< lease -> job, queued or running
  std::vector<std::string> handed_back;       ///< job ids for the BYE
  caf::typed_response_promise<caf::ok_atom> stop_promise;
  std::map<std::string, counts> jobs_by_function;  ///< for node_stats
  std::map<std::string, std::string> withdrawn;    ///< kind -> why its pool gave up
  std::set<std::string> withdrawn_functions;       ///< functions of those kinds
  bool batch_out = false;            ///< the broker takes BATCH frames (from WELCOME)
  std::vector<std::string> outbox;   ///< DONEs waiting for the flush message
  bool flush_pending = false;        ///< a flush message is in the mailbox
  int64_t withheld = 0;              ///< slots not granted (yet): see node_options::backed_up
  int64_t extra_credit = 0;          ///< withheld slots granted, for the next flush
  int64_t unused_credit = 0;         ///< slots granted and not used by a JOB yet (about)

  ~gateway_state();
};

gateway_actor::behavior_type gateway_impl(gateway_actor::stateful_pointer<gateway_state> self, gateway_config cfg);

/// Spawns a gateway in `sys` (so that callers need not include the actor
/// implementation headers).
gateway_actor spawn_gateway(caf::actor_system& sys, gateway_config cfg);

}  // namespace klynaa::nodes
