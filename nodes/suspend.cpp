// See suspend.hpp.
#include "nodes/suspend.hpp"

#include "nodes/fiber.hpp"

namespace klynaa::nodes {
namespace {

// The job context of the fiber that runs on this thread now: set by the worker
// around each resume (job_fiber_scope), so it is never read across a yield.
thread_local job_fiber_context* current = nullptr;

}  // namespace

job_fiber_context* current_job_fiber() {
  return fiber::current() != nullptr ? current : nullptr;
}

job_fiber_scope::job_fiber_scope(job_fiber_context* job) : previous_(current) { current = job; }

job_fiber_scope::~job_fiber_scope() { current = previous_; }

bool suspend_job(const std::function<std::function<void()>(std::function<void()> wake)>& start) {
  job_fiber_context* job = current_job_fiber();
  if (job == nullptr || job->abandoned) return false;
  auto woken = std::make_shared<std::atomic<bool>>(false);
  auto post = job->post_resume;
  job->woken = woken;
  job->cancel = start([woken, post] {
    if (!woken->exchange(true) && post) post();
  });
  // A resume may come for an earlier wait, or before this one's answer: only
  // `woken` says the wait is over. The thread may differ after each yield, and
  // so may `current`: `job` (the worker's) stays the same.
  while (!woken->load()) fiber::yield();
  job->cancel = nullptr;
  job->woken.reset();
  return true;
}

}  // namespace klynaa::nodes
