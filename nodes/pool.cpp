// See pool.hpp. Order of events for one job: gateway -> run -> queue ->
// dispatch to an idle worker -> done from the worker -> forwarded to the
// gateway -> next dispatch. A worker's death between run and done turns into a
// transient DONE built here.
#include "nodes/pool.hpp"

#include <caf/actor_cast.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include "nodes/atoms.hpp"
#include "nodes/wire.hpp"
#include "nodes/worker.hpp"
#include "protocol/cluster.hpp"
#include "protocol/log.hpp"

namespace klynaa::nodes {

namespace cl = protocol::cluster;

using pool_actor_ptr = caf::stateful_actor<pool_state>*;

pool_state::~pool_state() {
  for (auto& s : slots)
    caf::anon_send_exit(s.worker, caf::exit_reason::user_shutdown);
}

namespace {

caf::actor spawn_worker(pool_actor_ptr self) {
  const auto& c = self->state.cfg;
  return self->spawn<caf::detached + caf::monitored>(worker_actor,
                                                      worker_config{c.node, c.spec.kind, c.spec.make_handler, c.busy});
}

void dispatch(pool_actor_ptr self) {
  auto& st = self->state;
  for (auto& s : st.slots) {
    if (st.queue.empty())
      return;
    if (s.busy)
      continue;
    auto p = std::move(st.queue.front());
    st.queue.pop_front();
    s.busy = true;
    s.lease = p.lease;
    s.frame = std::move(p.frame);
    self->send(s.worker, run_atom::value, s.lease, s.frame);
  }
}

pool_state::slot* slot_of(pool_actor_ptr self, const caf::actor_addr& worker) {
  for (auto& s : self->state.slots)
    if (s.worker.address() == worker)
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

void on_done(pool_actor_ptr self, int64_t lease, std::string done) {
  auto* s = slot_of(self, caf::actor_cast<caf::actor_addr>(self->current_sender()));
  if (s == nullptr || !s->busy || s->lease != lease) {
    log::error("node", "pool got a done it did not expect", {{"kind", self->state.cfg.spec.kind}, {"lease", lease}});
    return;
  }
  if (done.empty())
    done = failure_frame(s->frame, "worker_error", "the worker could not decode the job");
  s->busy = false;
  s->frame.clear();
  self->send(self->state.gateway, done_atom::value, lease, std::move(done));
  dispatch(self);
}

void on_worker_down(pool_actor_ptr self, const caf::down_msg& msg) {
  auto* s = slot_of(self, msg.source);
  if (s == nullptr)
    return;
  auto reason = self->system().render(msg.reason);
  log::error("node", "worker died; restarting it", {{"kind", self->state.cfg.spec.kind}, {"reason", reason},
                                                    {"node", self->state.cfg.node}});
  if (s->busy) {
    auto done = failure_frame(s->frame, "worker_died", "the worker running this job died: " + reason);
    self->send(self->state.gateway, done_atom::value, s->lease, std::move(done));
  }
  s->busy = false;
  s->frame.clear();
  s->worker = spawn_worker(self);
  dispatch(self);
}

void on_drain(pool_actor_ptr self) {
  auto& st = self->state;
  st.draining = true;
  for (auto& p : st.queue)
    self->send(st.gateway, handback_atom::value, p.lease, p.job_id);
  st.queue.clear();
}

}  // namespace

caf::behavior pool_actor(pool_actor_ptr self, caf::actor gateway, pool_config cfg) {
  auto& st = self->state;
  st.gateway = std::move(gateway);
  st.cfg = std::move(cfg);
  st.slots.resize(static_cast<size_t>(st.cfg.spec.workers));
  for (auto& s : st.slots)
    s.worker = spawn_worker(self);
  self->set_down_handler([self](caf::down_msg& msg) { on_worker_down(self, msg); });
  return {
      [self](run_atom, int64_t lease, std::string& job_id, std::string& frame) {
        auto& st = self->state;
        if (st.draining) {
          self->send(st.gateway, handback_atom::value, lease, std::move(job_id));
          return;
        }
        st.queue.push_back({lease, std::move(job_id), std::move(frame)});
        dispatch(self);
      },
      [self](done_atom, int64_t lease, std::string& done) { on_done(self, lease, std::move(done)); },
      [self](drain_atom) { on_drain(self); },
  };
}

}  // namespace klynaa::nodes
