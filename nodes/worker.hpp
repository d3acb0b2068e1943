// A worker: one CAF actor owning one job_handler made by its kind's
// make_handler(). It runs one job at a time, as its pool hands them out, in
// one of three ways (actor_kind_spec, nodes/job.hpp):
//   - blocking: detached, a thread of its own, for handlers that block on HTTP;
//   - fibers: on the scheduler's threads, each job on a fiber of its own
//     (nodes/suspend.hpp): where the handler waits for an HTTP answer the fiber
//     yields, the worker returns to CAF, and a resume message continues it;
//   - neither: on the scheduler's threads, for handlers that never wait (geo).
//
// Messages (its typed handle, worker_actor in handles.hpp, lists them):
//   (run_atom, lease, job frame) -> sends (done_atom, lease, done frame, dying, outcome code) to the
//     sender. A handler that throws is a transient failure with the exception's
//     text, after which the worker exits (its pool restarts it with a fresh
//     handler); data that is not a JSON object is a permanent failure.
//   (resume_atom)                   fibers: continue the job's fiber (its wait is over).
// A fiber worker that exits while its job waits (abandoned past the job's time
// limit, or the node stopping) cancels what the job waits for and lets the
// handler run to its end before it goes; the late result is dropped.
// It logs a line at each job's start and end (docs/operations.md, "Watching it": Logs).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "nodes/handles.hpp"
#include "nodes/job.hpp"
#include "nodes/suspend.hpp"

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
  bool fibers = false;  ///< run each job on a fiber (actor_kind_spec::fibers)
};

class fiber;

struct worker_state {
  static inline const char* name = "worker";
  worker_config cfg;
  std::unique_ptr<job_handler> handler;  ///< nullptr when make_handler failed

  // fibers: the job in progress, from run to done
  job_fiber_context job;
  pool_actor pool;       ///< who gets the DONE
  int64_t lease = 0;
  std::string done;      ///< the DONE frame, once the handler returned
  bool threw = false;
  int64_t code = 0;
  /// Last, so destroyed first: unwinding a waiting fiber runs the handler's
  /// code, which writes the members above.
  std::unique_ptr<fiber> fib;

  worker_state();
  ~worker_state();  ///< finishes a waiting job's fiber first (see the file comment)
};

/// The worker's behavior (spawned by its pool). Always answers a run
/// with a done; the done frame is empty only if the job frame could not be
/// decoded (a bug), and the pool then reports the job itself.
worker_actor::behavior_type worker_impl(worker_actor::stateful_pointer<worker_state> self, worker_config cfg);

}  // namespace klynaa::nodes
