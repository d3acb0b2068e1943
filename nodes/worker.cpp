// See worker.hpp. The handler call is the only place where job logic runs;
// everything it may throw stops here.
#include "nodes/worker.hpp"

#include <chrono>
#include <exception>
#include <thread>

#include <caf/actor_cast.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/sec.hpp>
#include <caf/stateful_actor.hpp>

#include <caf/actor_addr.hpp>
#include <caf/send.hpp>

#include "nodes/atoms.hpp"
#include "nodes/fiber.hpp"
#include "nodes/wire.hpp"
#include "protocol/cluster.hpp"
#include "protocol/log.hpp"

namespace klynaa::nodes {

namespace cl = protocol::cluster;

namespace {

/// Decrements the busy counter however the handler call ends.
struct busy_scope {
  explicit busy_scope(std::atomic<int>& n) : n_(n) { ++n_; }
  ~busy_scope() { --n_; }
  std::atomic<int>& n_;
};

/// Runs the handler; `threw` tells the worker to exit after reporting, so that
/// its pool restarts it with a fresh handler (a handler that threw may be in a
/// bad state).
job_result call_handler(job_handler* handler, const job& j, std::atomic<int>& busy, bool& threw) {
  busy_scope scope{busy};
  if (handler == nullptr)
    return job_result::failure(outcome::transient, "no_handler", "the node could not create a handler for this kind");
  if (auto* on_fiber = current_job_fiber())
    on_fiber->function = j.function;  // the adaptive limits are per function
  try {
    return handler->run(j);
  } catch (const std::exception& e) {
    threw = true;
    return job_result::failure(outcome::transient, "exception", e.what());
  } catch (...) {
    threw = true;
    return job_result::failure(outcome::transient, "exception", "the handler threw a non-standard exception");
  }
}

// A job's two lines (docs/operations.md, "Watching it": Logs) are rendered
// without building a JSON object: they are most of what a microsecond job costs
// its worker (docs/performance.md).
log::fields_text job_fields(const cl::job& wire, const worker_config& cfg) {
  log::fields_text f;
  f.add("job_id", wire.job_id).add("function", wire.function).add("attempt", wire.attempt).add("node", cfg.node);
  return f;
}

void log_end(const cl::job& wire, const worker_config& cfg, const job_result& r, int64_t duration_ms) {
  const auto l = r.kind == outcome::ok ? log::level::info : log::level::warning;
  if (!log::enabled(l))
    return;
  auto fields = job_fields(wire, cfg);
  fields.add("duration_ms", duration_ms).add("outcome", log_outcome(r.kind));
  if (r.kind == outcome::ok) {
    log::write(l, cfg.kind, "job finished", fields);
    return;
  }
  fields.add("error_code", r.error_code).add("error", r.message);
  if (r.http_status)
    fields.add("http_status", static_cast<int64_t>(*r.http_status));
  log::write(l, cfg.kind, "job failed", fields);
}

/// Runs one job frame to its DONE frame; `code` gets its outcome_code().
std::string run_one(job_handler* handler, const worker_config& cfg, const std::string& frame, bool& threw,
                    int64_t& code) {
  code = unknown_outcome;
  std::string error;
  auto msg = cl::decode(frame.data(), frame.size(), &error);
  if (!msg || !std::holds_alternative<cl::job>(*msg)) {
    // The gateway decoded this frame before: only a bug gets here.
    log::error(cfg.kind, "worker got a frame that is not a job", {{"error", error}, {"node", cfg.node}});
    return {};
  }
  const auto& wire = std::get<cl::job>(*msg);
  if (log::enabled(log::level::info))
    log::write(log::level::info, cfg.kind, "job started", job_fields(wire, cfg));
  auto start = std::chrono::steady_clock::now();
  job_result result;
  if (auto j = to_job(wire, cfg.node, &error))
    result = call_handler(handler, *j, *cfg.busy, threw);
  else
    result = job_result::failure(outcome::permanent, "invalid_data", error);
  auto duration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  log_end(wire, cfg, result, duration_ms);
  code = outcome_code(result.kind);
  return cl::encode(to_done(wire, result, duration_ms));
}

std::unique_ptr<job_handler> make_handler(const worker_config& cfg) {
  try {
    if (cfg.make_handler)
      return cfg.make_handler();
  } catch (const std::exception& e) {
    log::error(cfg.kind, "could not create a job handler", {{"error", e.what()}, {"node", cfg.node}});
  } catch (...) {
    log::error(cfg.kind, "could not create a job handler", {{"node", cfg.node}});
  }
  return nullptr;
}

using worker_ptr = worker_actor::stateful_pointer<worker_state>;

/// Runs the job's fiber until it waits or ends; once it ends, reports the DONE.
void step(worker_ptr self) {
  auto& st = self->state;
  if (!st.fib || st.fib->done())
    return;  // a resume for a job already reported
  {
    job_fiber_scope scope{&st.job};
    st.fib->resume();
  }
  if (!st.fib->done())
    return;  // it waits: post_resume brings it back
  st.fib.reset();
  self->send(st.pool, done_atom::value, st.lease, std::move(st.done), st.threw, st.code);
  if (st.threw)  // the job is reported; now die, to be restarted afresh
    self->quit(caf::make_error(caf::sec::runtime_error, "the job handler threw"));
}

/// Starts one job on a fresh fiber.
void start_on_fiber(worker_ptr self, int64_t lease, const std::string& frame) {
  auto& st = self->state;
  st.pool = caf::actor_cast<pool_actor>(self->current_sender());
  st.lease = lease;
  st.done.clear();
  st.threw = false;
  st.code = unknown_outcome;
  st.job = job_fiber_context{};
  caf::actor_addr me = self->address();  // weak: a waiting request must not keep the worker alive
  st.job.post_resume = [me] {
    if (auto h = caf::actor_cast<worker_actor>(me))
      caf::anon_send(h, resume_atom::value);
  };
  try {
    st.fib = std::make_unique<fiber>([self, frame] {
      auto& s = self->state;
      s.done = run_one(s.handler.get(), s.cfg, frame, s.threw, s.code);
    });
  } catch (const std::exception& e) {  // no stack could be mapped: a transient condition
    auto msg = cl::decode(frame.data(), frame.size());
    std::string done;
    if (msg && std::holds_alternative<cl::job>(*msg))
      done = cl::encode(failure_done(std::get<cl::job>(*msg), outcome::transient, "no_fiber",
                                     std::string("the node could not start the job: ") + e.what()));
    self->send(st.pool, done_atom::value, lease, std::move(done), false,
               done.empty() ? unknown_outcome : outcome_code(outcome::transient));
    return;
  }
  step(self);
}

}  // namespace

worker_state::worker_state() = default;

worker_state::~worker_state() {
  if (!fib || fib->done())
    return;
  // The job waits (abandoned, or the node stops): cancel what it waits for, wait
  // for the cancellation to come back, and let the handler run to its end, so
  // that everything on the fiber's stack is destroyed. Its result is dropped.
  job.abandoned = true;
  if (job.cancel)
    job.cancel();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (int rounds = 0; !fib->done() && rounds < 1000; ++rounds) {
    while (job.woken && !job.woken->load() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (job.woken && !job.woken->load())
      break;  // nothing came back: unwound below
    job_fiber_scope scope{&job};
    fib->resume();
  }
  if (fib->done())
    return;
  // The cancel did not come back: unwind the fiber (nodes/fiber.hpp); with the
  // job abandoned, any further HTTP call of its handler returns at once.
  log::error(cfg.kind, "a job's wait was not answered after its cancel: unwinding its fiber",
             {{"node", cfg.node}, {"lease", lease}});
  job_fiber_scope scope{&job};
  fib.reset();
}

worker_actor::behavior_type worker_impl(worker_ptr self, worker_config cfg) {
  // One handler per worker, destroyed with the worker's state when it exits.
  self->state.handler = make_handler(cfg);
  self->state.cfg = std::move(cfg);
  return {
      [self](run_atom, int64_t lease, const std::string& frame) {
        auto& st = self->state;
        if (st.cfg.abandoned->load())
          return;  // the pool gave this job to another worker
        if (st.cfg.fibers) {
          start_on_fiber(self, lease, frame);
          return;
        }
        bool threw = false;
        int64_t code = unknown_outcome;
        auto done = run_one(st.handler.get(), st.cfg, frame, threw, code);
        // `threw` tells the pool this worker is about to exit: no next job for it.
        self->send(caf::actor_cast<pool_actor>(self->current_sender()), done_atom::value, lease, std::move(done),
                   threw, code);
        if (threw)  // the job is reported; now die, to be restarted afresh
          self->quit(caf::make_error(caf::sec::runtime_error, "the job handler threw"));
      },
      [self](resume_atom) { step(self); },
  };
}

}  // namespace klynaa::nodes
