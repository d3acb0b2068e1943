// See pool.hpp. Order of events for one job: gateway -> run -> queue ->
// dispatch to an idle worker -> done from the worker -> forwarded to the
// gateway -> next dispatch. A worker's death between run and done turns into a
// transient DONE built here; so does a job past its time limit.
#include "nodes/pool.hpp"

#include <algorithm>

#include <caf/actor_cast.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include "nodes/atoms.hpp"
#include "nodes/wire.hpp"
#include "nodes/worker.hpp"
#include "protocol/backoff.hpp"
#include "protocol/cluster.hpp"
#include "protocol/log.hpp"

namespace klynaa::nodes {

namespace cl = protocol::cluster;

using pool_actor_ptr = pool_actor::stateful_pointer<pool_state>;
using clock = pool_state::clock;

pool_state::~pool_state() {
  for (auto& s : slots)
    if (s.worker)
      caf::anon_send_exit(s.worker, caf::exit_reason::user_shutdown);
  for (auto& w : abandoned)
    caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
}

namespace {

constexpr auto tick_interval = std::chrono::milliseconds{100};

worker_actor spawn_worker(pool_actor_ptr self, pool_state::slot& s) {
  const auto& c = self->state.cfg;
  worker_config wc{c.node, c.spec.kind, c.spec.make_handler, c.busy};
  wc.fibers = c.spec.fibers;
  s.abandoned = wc.abandoned;
  if (!c.spec.blocking || c.spec.fibers)  // see actor_kind_spec::blocking and ::fibers
    return self->spawn<caf::monitored>(worker_impl, std::move(wc));
  return self->spawn<caf::detached + caf::monitored>(worker_impl, std::move(wc));
}

nlohmann::json fields(pool_actor_ptr self) {
  return {{"node", self->state.cfg.node}, {"kind", self->state.cfg.spec.kind}};
}

/// Jobs a worker is given at once. For kinds with prefetch (short jobs: geo)
/// two, so that its next job waits in its mailbox while its DONE travels to the
/// pool: it never idles for the round trip (docs/performance.md). Kinds that
/// call Django keep one: a job must not wait behind a slow call while another
/// worker is free.
size_t depth(const pool_state& st) {
  return st.cfg.spec.prefetch > 0 ? 2 : 1;
}

void dispatch(pool_actor_ptr self) {
  auto& st = self->state;
  const size_t most = depth(st);
  for (size_t round = 0; round < most; ++round) {  // first every idle worker, then a second job each
    for (auto& s : st.slots) {
      if (st.queue.empty())
        return;
      if (!s.worker || s.dying || (s.busy ? 1 : 0) + s.next.size() > round)
        continue;
      auto p = std::move(st.queue.front());
      st.queue.pop_front();
      self->send(s.worker, run_atom::value, p.lease, p.frame);
      if (s.busy) {
        s.next.push_back(std::move(p));
        continue;
      }
      s.busy = true;
      s.lease = p.lease;
      s.job_id = std::move(p.job_id);
      s.frame = std::move(p.frame);
      s.started = self->clock().now();
    }
  }
}

/// The jobs waiting in a worker's mailbox go back to the head of the queue, in
/// order: they never started (the worker died, or was abandoned, before them).
void requeue_next(pool_state& st, pool_state::slot& s) {
  while (!s.next.empty()) {
    st.queue.push_front(std::move(s.next.back()));
    s.next.pop_back();
  }
}

/// The slot's next job becomes the one it runs (its worker starts it `now`).
void start_next(pool_state::slot& s, clock::time_point now) {
  s.busy = false;
  s.frame.clear();
  if (s.next.empty())
    return;
  auto p = std::move(s.next.front());
  s.next.pop_front();
  s.busy = true;
  s.lease = p.lease;
  s.job_id = std::move(p.job_id);
  s.frame = std::move(p.frame);
  s.started = now;
}

pool_state::slot* slot_of(pool_actor_ptr self, const caf::actor_addr& worker) {
  for (auto& s : self->state.slots)
    if (s.worker && s.worker.address() == worker)
      return &s;
  return nullptr;
}

/// A DONE for the job in `frame` that its worker could not report.
std::string failure_frame(const std::string& frame, const std::string& code, const std::string& message) {
  auto msg = cl::decode(frame.data(), frame.size());
  if (!msg || !std::holds_alternative<cl::job>(*msg))
    return {};
  return cl::encode(failure_done(std::get<cl::job>(*msg), outcome::transient, code, message));
}

/// Reports the slot's job as failed and frees the slot.
void fail_running(pool_actor_ptr self, pool_state::slot& s, const std::string& code, const std::string& message) {
  requeue_next(self->state, s);
  if (!s.busy)
    return;
  auto done = failure_frame(s.frame, code, message);
  const int64_t reported = done.empty() ? unknown_outcome : outcome_code(outcome::transient);
  self->send(self->state.gateway, done_atom::value, s.lease, std::move(done), reported);
  s.busy = false;
  s.frame.clear();
}

/// Gives up on the kind: no more restarts or jobs; the queue goes back to the
/// broker through the gateway, which withdraws the kind.
void escalate(pool_actor_ptr self, const std::string& reason) {
  auto& st = self->state;
  st.withdrawn = true;
  nlohmann::json leases = nlohmann::json::array();
  nlohmann::json ids = nlohmann::json::array();
  for (auto& p : st.queue) {
    leases.push_back(p.lease);
    ids.push_back(p.job_id);
  }
  st.queue.clear();
  auto f = fields(self);
  f["reason"] = reason;
  f["handed_back"] = ids;
  log::error("node", "too many restarts: withdrawing the actor kind from the broker", f);
  // The handed-back jobs travel as JSON text: only strings and integers cross
  // between the node's actors (atoms.hpp).
  nlohmann::json handed = {{"leases", leases}, {"jobs", ids}};
  self->send(st.gateway, withdraw_atom::value, st.cfg.spec.kind, reason, handed.dump());
}

/// Counts a restart; false when it is one too many (the pool escalated).
bool note_restart(pool_actor_ptr self, clock::time_point now) {
  auto& st = self->state;
  const auto& lim = st.cfg.spec.limits;
  const auto window = std::chrono::milliseconds{lim.restart_window_ms};
  while (!st.restarts.empty() && now - st.restarts.front() > window)
    st.restarts.pop_front();
  st.restarts.push_back(now);
  if (static_cast<int64_t>(st.restarts.size()) > lim.max_restarts) {
    escalate(self, std::to_string(st.restarts.size()) + " worker restarts within " +
                       std::to_string(lim.restart_window_ms / 1000) + " s (node.max_restarts = " +
                       std::to_string(lim.max_restarts) + ", node.restart_window_seconds)");
    return false;
  }
  return true;
}

/// The backoff before the next restart: base doubled per recent restart, capped.
std::chrono::milliseconds restart_delay(const pool_state& st) {
  const auto& lim = st.cfg.spec.limits;
  const auto recent = static_cast<int64_t>(st.restarts.size());
  return std::chrono::milliseconds{
      protocol::capped_doubling(lim.restart_backoff_ms, lim.restart_backoff_max_ms, recent - 1)};
}

void on_done(pool_actor_ptr self, int64_t lease, std::string done, bool dying, int64_t code) {
  auto* s = slot_of(self, caf::actor_cast<caf::actor_addr>(self->current_sender()));
  if (s == nullptr || !s->busy || s->lease != lease) {
    // An abandoned worker's handler returned after its job was reported: the
    // broker already has that attempt as a timeout, so its result is dropped.
    log::warning("node", "dropped the late result of an abandoned worker", [&] {
      auto f = fields(self);
      f["lease"] = lease;
      return f;
    }());
    return;
  }
  if (done.empty()) {
    done = failure_frame(s->frame, "worker_error", "the worker could not decode the job");
    code = done.empty() ? unknown_outcome : outcome_code(outcome::transient);
  }
  s->dying = dying;
  if (dying)  // it exits after this: what waits in its mailbox goes to the others
    requeue_next(self->state, *s);
  start_next(*s, self->clock().now());
  self->send(self->state.gateway, done_atom::value, lease, std::move(done), code);
  dispatch(self);
}

void on_worker_down(pool_actor_ptr self, const caf::down_msg& msg) {
  auto& st = self->state;
  auto gone = std::find_if(st.abandoned.begin(), st.abandoned.end(),
                           [&](const worker_actor& a) { return a.address() == msg.source; });
  if (gone != st.abandoned.end()) {  // an abandoned worker's call returned at last
    st.abandoned.erase(gone);
    return;
  }
  auto* s = slot_of(self, msg.source);
  if (s == nullptr)
    return;
  auto reason = self->system().render(msg.reason);
  fail_running(self, *s, "worker_died", "the worker running this job died: " + reason);
  s->worker = nullptr;
  s->dying = false;
  if (st.draining || st.withdrawn)
    return;
  auto now = self->clock().now();
  if (!note_restart(self, now))
    return;
  auto delay = restart_delay(st);
  s->restart_at = now + delay;
  auto f = fields(self);
  f["reason"] = reason;
  f["restart_in_ms"] = delay.count();
  f["recent_restarts"] = st.restarts.size();
  log::warning("node", "worker died; restarting it after a backoff", f);
}

/// Restarts due, and jobs past their time limit.
void on_tick(pool_actor_ptr self) {
  auto& st = self->state;
  auto now = self->clock().now();
  const auto& lim = st.cfg.spec.limits;
  for (auto& s : st.slots) {
    if (st.withdrawn)
      break;
    if (!s.worker && !st.draining && now >= s.restart_at) {
      s.worker = spawn_worker(self, s);
      log::info("node", "worker restarted", fields(self));
    }
    if (s.busy && lim.job_timeout_ms > 0 && now - s.started > std::chrono::milliseconds{lim.job_timeout_ms}) {
      auto f = fields(self);
      f["lease"] = s.lease;
      f["job_timeout_ms"] = lim.job_timeout_ms;
      log::error("node", "job ran past its time limit: reported as failed, its worker abandoned and replaced", f);
      fail_running(self, s, "timeout",
                   "the job ran longer than node.job_timeout_seconds (" + std::to_string(lim.job_timeout_ms / 1000) +
                       " s); it was abandoned and will be retried");
      self->demonitor(s.worker.address());
      self->monitor(s.worker);  // keep watching it, as an abandoned worker
      st.abandoned.push_back(s.worker);
      if (s.abandoned)
        s.abandoned->store(true);  // its mailbox's jobs were queued again (fail_running)
      caf::anon_send_exit(s.worker, caf::exit_reason::user_shutdown);
      s.worker = nullptr;
      s.restart_at = now;  // replaced at once: the kind keeps its capacity
      // A blocked thread may be a broken handler; a fiber job that waited too
      // long for a slow downstream is not: it counts as no restart, or a backlog
      // would withdraw the kind (docs/reliability.md, "Jobs on fibers").
      if (!st.cfg.spec.fibers && !note_restart(self, now))
        break;
      s.worker = spawn_worker(self, s);
    }
  }
  dispatch(self);
  self->delayed_send(self, tick_interval, tick_atom::value);
}

void on_drain(pool_actor_ptr self) {
  auto& st = self->state;
  st.draining = true;
  for (auto& p : st.queue)
    self->send(st.gateway, handback_atom::value, p.lease, p.job_id);
  st.queue.clear();
}

}  // namespace

pool_actor::behavior_type pool_impl(pool_actor_ptr self, gateway_actor gateway, pool_config cfg) {
  auto& st = self->state;
  st.gateway = std::move(gateway);
  st.cfg = std::move(cfg);
  st.slots.resize(static_cast<size_t>(st.cfg.spec.workers));
  for (auto& s : st.slots)
    s.worker = spawn_worker(self, s);
  self->set_down_handler([self](caf::down_msg& msg) { on_worker_down(self, msg); });
  self->delayed_send(self, tick_interval, tick_atom::value);
  return {
      [self](run_atom, int64_t lease, std::string& job_id, std::string& frame) {
        auto& st = self->state;
        if (st.draining || st.withdrawn) {
          self->send(st.gateway, handback_atom::value, lease, std::move(job_id));
          return;
        }
        st.queue.push_back({lease, std::move(job_id), std::move(frame)});
        dispatch(self);
      },
      [self](done_atom, int64_t lease, std::string& done, bool dying, int64_t code) {
        on_done(self, lease, std::move(done), dying, code);
      },
      [self](drain_atom) { on_drain(self); },
      [self](tick_atom) { on_tick(self); },
  };
}

}  // namespace klynaa::nodes
