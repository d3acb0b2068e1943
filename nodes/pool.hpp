// A pool: the jobs of one actor kind. It keeps a FIFO queue and `workers`
// worker actors (nodes/worker.hpp), hands each idle worker the next job (for a
// kind with prefetch, also a second one that waits in the worker's mailbox, so
// the worker does not idle while its DONE goes to the pool and the next job
// comes back; jobs still waiting there when the worker dies or is abandoned go
// back to the queue: they never started, and an abandoned worker skips them),
// and supervises them in the OTP style (CAF 0.17 has no supervisor: monitors, a
// tick, restarts):
//   - a worker that dies (its handler threw: the worker reports the job and
//     exits so that its handler is made afresh) is restarted after a backoff
//     (limits.restart_backoff_ms, doubling with each recent restart, at most
//     restart_backoff_max_ms); a job it was running counts as a failed attempt
//     (transient), never lost;
//   - a job running longer than limits.job_timeout_ms is reported as a transient
//     failure ("timeout"); its worker is abandoned (a thread blocked in a call
//     cannot be killed: it ends when the call returns, and its late result is
//     dropped) and replaced, which counts as a restart;
//   - more than limits.max_restarts restarts within limits.restart_window_ms
//     escalate instead of looping: the pool stops taking jobs, hands its queue
//     back and tells the gateway, which withdraws the kind from the broker.
//
// Messages (its typed handle, pool_actor in handles.hpp, lists them):
//   (run_atom, lease, job_id, job frame)  queue this job (from the gateway);
//       while draining or withdrawn it is handed back at once.
//   (done_atom, lease, done frame, dying, outcome code) from a worker: forwarded
//       to the gateway as (done_atom, lease, done frame, outcome code); the worker takes the next job, unless
//       it is dying (its handler threw: it exits, and is restarted once its
//       exit arrives; a job handed to it meanwhile would die with it).
//   (drain_atom)                          stop taking jobs: every queued job goes
//       back to the gateway as (handback_atom, lease, job_id); running jobs finish.
//   (tick_atom)                           to itself every 100 ms: restarts due,
//       job time limits.
// To the gateway on escalation: (withdraw_atom, kind, reason, handed-back JSON
// {"leases": [...], "jobs": [...]}).
// When the pool exits, it sends an exit to its workers (an idle one ends at
// once, a busy one after its handler returns).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "nodes/handles.hpp"
#include "nodes/job.hpp"

namespace klynaa::nodes {

struct pool_config {
  std::string node;
  actor_kind_spec spec;
  std::shared_ptr<std::atomic<int>> busy;  ///< see worker_config::busy
};

struct pool_state {
  /// Its times come from the actor system's clock (self->clock().now()): the
  /// steady clock, or the deterministic one of CAF's test coordinator in tests.
  using clock = std::chrono::steady_clock;
  static inline const char* name = "pool";

  struct pending {
    int64_t lease = 0;
    std::string job_id;
    std::string frame;
  };
  struct slot {
    worker_actor worker;  ///< invalid while it waits to be restarted
    bool busy = false;
    bool dying = false;  ///< reported its last job and exits: takes no other
    int64_t lease = 0;
    std::string job_id;
    std::string frame;  ///< the job it runs, to report it if the worker dies
    clock::time_point started;
    clock::time_point restart_at;  ///< when an empty slot gets a new worker
    /// Jobs already in the worker's mailbox behind the one it runs (kinds with
    /// prefetch: see pool.cpp depth()); back to the queue if it dies first.
    std::deque<pending> next;
    std::shared_ptr<std::atomic<bool>> abandoned;  ///< the worker's flag (worker_config::abandoned)
  };

  pool_config cfg;
  gateway_actor gateway;
  std::vector<slot> slots;
  std::deque<pending> queue;
  std::deque<clock::time_point> restarts;  ///< within the restart window
  std::vector<worker_actor> abandoned;     ///< timed-out workers still blocked in a handler
  bool draining = false;
  bool withdrawn = false;

  ~pool_state();
};

pool_actor::behavior_type pool_impl(pool_actor::stateful_pointer<pool_state> self, gateway_actor gateway,
                                    pool_config cfg);

}  // namespace klynaa::nodes
