// Jobs that wait without holding a thread (docs/reliability.md, "Jobs on
// fibers"). A kind whose spec says `fibers` (nodes/job.hpp) runs each job's
// handler on a fiber of its own (nodes/fiber.hpp), resumed by the job's worker
// actor on CAF's scheduler threads. Where the handler would block on the
// network, the HTTP layer (actors/http.cpp) calls suspend_job() instead: the
// request goes to the node's event loop, the fiber yields, and the worker
// resumes it when the answer is in. Many jobs wait at once on a few threads.
//
// Rules for code that runs on a job fiber: never hold a mutex or a reference
// to thread_local state across a call that may suspend (any HTTP call); the
// fiber may be resumed on another thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

namespace klynaa::nodes {

/// What a job running on a fiber shares with the worker that runs it. The
/// worker owns it (nodes/worker.cpp); the fiber's code reads it through
/// current_job_fiber().
struct job_fiber_context {
  /// The job's function, e.g. "sendPickupNotification" (the adaptive limits
  /// are per downstream and function).
  std::string function;
  /// Asks the worker to resume the fiber soon, on its own thread. Thread-safe;
  /// a resume that finds nothing to resume is harmless.
  std::function<void()> post_resume;
  /// While the fiber waits: stops what it waits for (set by suspend_job()).
  std::function<void()> cancel;
  /// The wait in progress has been woken: its result is in.
  std::shared_ptr<std::atomic<bool>> woken;
  /// The job was abandoned (past its time limit, or the node is stopping):
  /// suspend_job() returns at once without waiting.
  bool abandoned = false;
};

/// The context of the job on the fiber running on this thread, or nullptr when
/// the caller is not on a job fiber (a thread of its own, a test, the geo loader).
job_fiber_context* current_job_fiber();

/// Runs `job` as the current job context of this thread while `body` runs (the
/// worker wraps each resume of a job's fiber in it). Not for other callers.
class job_fiber_scope {
 public:
  explicit job_fiber_scope(job_fiber_context* job);
  ~job_fiber_scope();
  job_fiber_scope(const job_fiber_scope&) = delete;
  job_fiber_scope& operator=(const job_fiber_scope&) = delete;

 private:
  job_fiber_context* previous_;
};

/// On a job fiber: calls `start(wake)`, which begins something asynchronous
/// that calls `wake` once, from any thread, when it is done, and returns how to
/// cancel it; then suspends the fiber until `wake` has been called. Returns
/// true once woken. Returns false at once, without calling `start`, when the
/// job was abandoned or the caller is not on a job fiber (then the caller must
/// not expect `wake`).
bool suspend_job(const std::function<std::function<void()>(std::function<void()> wake)>& start);

}  // namespace klynaa::nodes
