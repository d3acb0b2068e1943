// A worker: one CAF actor owning one job_handler made by its kind's
// make_handler(); detached (its own thread) when the kind's handlers may block
// on HTTP, else on the scheduler's threads (actor_kind_spec::blocking). It runs
// one job at a time, as its pool hands them out.
//
// Messages:
//   (run_atom, lease, job frame) -> sends (done_atom, lease, done frame, dying, outcome code) to the
//     sender. A handler that throws is a transient failure with the exception's
//     text, after which the worker exits (its pool restarts it with a fresh
//     handler); data that is not a JSON object is a permanent failure.
// It logs a line at each job's start and end (contract §7).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "nodes/job.hpp"

namespace klynaa::nodes {

struct worker_config {
  std::string node;  ///< node name, for logs and job::node
  std::string kind;  ///< actor kind, the log component
  std::function<std::unique_ptr<job_handler>()> make_handler;
  /// Counts handlers running right now on this node (the runtime reads it at
  /// shutdown to know whether a stuck handler must be abandoned).
  std::shared_ptr<std::atomic<int>> busy;
  /// Set by the pool when it abandons this worker (a job past its time limit):
  /// jobs still in its mailbox are skipped, not run (the pool queued them again).
  std::shared_ptr<std::atomic<bool>> abandoned = std::make_shared<std::atomic<bool>>(false);
};

struct worker_state {
  static inline const char* name = "worker";
  worker_config cfg;
  std::unique_ptr<job_handler> handler;  ///< nullptr when make_handler failed
};

/// The worker's behavior (spawned by its pool). Always answers a run
/// with a done; the done frame is empty only if the job frame could not be
/// decoded (a bug), and the pool then reports the job itself.
caf::behavior worker_actor(caf::stateful_actor<worker_state>* self, worker_config cfg);

}  // namespace klynaa::nodes
