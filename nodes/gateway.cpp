// See gateway.hpp. One handler per message; the timers all live in on_tick so
// that there is a single pending delayed message at any time, and it is gone
// within 250 ms after the gateway stops.
#include "nodes/gateway.hpp"

#include <algorithm>

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include "nodes/atoms.hpp"
#include "nodes/io_thread.hpp"
#include "nodes/pool.hpp"
#include "nodes/wire.hpp"
#include "protocol/backoff.hpp"
#include "protocol/cluster.hpp"
#include "protocol/log.hpp"

namespace klynaa::nodes {

namespace cl = protocol::cluster;

using gateway_ptr = gateway_actor::stateful_pointer<gateway_state>;
using clock = gateway_state::clock;
using std::chrono::milliseconds;

gateway_state::~gateway_state() {
  for (auto& p : pools)
    caf::anon_send_exit(p, caf::exit_reason::user_shutdown);
  push.reset();
}

namespace {

/// A broker silent for this many heartbeats is presumed gone (restarted).
constexpr int64_t silent_heartbeats = 3;

int64_t elapsed_ms(clock::time_point since, clock::time_point now) {
  return std::chrono::duration_cast<milliseconds>(now - since).count();
}

nlohmann::json node_field(gateway_ptr self) {
  return {{"node", self->state.cfg.node}};
}

// -- outgoing ------------------------------------------------------------------

void push_frame(gateway_ptr self, const std::string& frame) {
  auto& st = self->state;
  if (!st.push->send(zmq::buffer(frame), zmq::send_flags::dontwait))
    log::error("node", "could not queue a frame for the broker", node_field(self));
  st.last_tx = self->clock().now();
}

/// Sends the queued DONEs: several as one BATCH to a broker that takes them,
/// else (the session ended, or the broker does not) one frame each.
void flush_outbox(gateway_ptr self) {
  auto& st = self->state;
  if (st.extra_credit > 0) {  // after the DONEs it came with
    st.outbox.push_back(cl::encode(cl::credit{st.extra_credit}));
    st.extra_credit = 0;
  }
  if (st.outbox.empty())
    return;
  if (st.batch_out && st.outbox.size() > 1) {
    push_frame(self, cl::encode_batch(st.outbox));
  } else {
    for (const auto& f : st.outbox)
      push_frame(self, f);
  }
  st.outbox.clear();
}

/// The session with the broker ended (BYE, silence): what is queued goes out
/// one frame each, and so does everything until a WELCOME says the next broker
/// takes BATCH frames (it may be an older one).
void stop_batching(gateway_ptr self) {
  auto& st = self->state;
  st.batch_out = false;
  flush_outbox(self);
}

/// Sends a frame now, after the queued ones (so that the broker sees them in order).
void send_frame(gateway_ptr self, const std::string& frame) {
  flush_outbox(self);
  push_frame(self, frame);
}

/// Sends a frame with the others that arrive before the flush message (a broker
/// that does not take BATCH frames: now).
void queue_frame(gateway_ptr self, std::string frame) {
  auto& st = self->state;
  if (!st.batch_out) {
    send_frame(self, frame);
    return;
  }
  st.outbox.push_back(std::move(frame));
  if (st.outbox.size() >= cl::max_batch)
    flush_outbox(self);
  if (!st.flush_pending) {
    st.flush_pending = true;
    self->send(self, flush_atom::value);
  }
}

void on_flush(gateway_ptr self) {
  self->state.flush_pending = false;
  flush_outbox(self);
}

void send_msg(gateway_ptr self, const cl::message& m) {
  send_frame(self, cl::encode(m));
}

/// Grants `n` withheld slots, in one CREDIT with the next flush.
void grant_withheld(gateway_ptr self, int64_t n) {
  auto& st = self->state;
  n = std::min(n, st.withheld);
  if (n <= 0)
    return;
  st.withheld -= n;
  st.extra_credit += n;
  st.unused_credit += n;
  if (!st.batch_out) {
    flush_outbox(self);
  } else if (!st.flush_pending) {
    st.flush_pending = true;
    self->send(self, flush_atom::value);
  }
}

bool backed_up(const gateway_state& st) {
  return st.cfg.backed_up && st.cfg.backed_up();
}

const std::string& current_endpoint(const gateway_state& st) {
  return st.endpoints.empty() ? st.cfg.broker_endpoint : st.endpoints[st.endpoint_index];
}

bool several_brokers(const gateway_state& st) {
  return st.endpoints.size() > 1;
}

/// Asks the I/O thread to connect to the next broker endpoint (several only).
void next_broker(gateway_ptr self, const char* why) {
  auto& st = self->state;
  if (!several_brokers(st))
    return;
  const auto& from = current_endpoint(st);
  st.endpoint_index = (st.endpoint_index + 1) % st.endpoints.size();
  log::info("node", "trying the next broker endpoint",
            {{"node", st.cfg.node}, {"from", from}, {"to", current_endpoint(st)}, {"reason", why}});
  send_frame(self, std::string(1, io_thread::rotate_frame));
}

void send_ready(gateway_ptr self) {
  auto& st = self->state;
  cl::ready r;
  r.node = st.cfg.node;
  r.batch = true;
  for (const auto& k : st.cfg.kinds)
    if (!st.withdrawn.count(k.kind))
      r.kinds.push_back(k.kind);
  // Jobs this node still holds (from a previous session) count against the
  // credit, so it never holds more than it granted.
  // With initial_credit, the rest follows while the node is not backed up.
  const int64_t free_slots = std::max<int64_t>(0, st.capacity - static_cast<int64_t>(st.held.size()));
  r.credit = st.cfg.initial_credit > 0 ? std::min(free_slots, st.cfg.initial_credit) : free_slots;
  st.withheld = free_slots - r.credit;
  st.extra_credit = 0;
  st.unused_credit = r.credit;
  st.last_ready = self->clock().now();
  // Backoff: register_retry_ms, doubling up to register_retry_max_ms, so that an
  // unreachable or wrong endpoint costs one line and one frame per interval.
  // With several brokers each one gets register_retry_ms in turn instead: a
  // standby answers BYE at once, and the active one should be found fast.
  st.ready_wait_ms = st.ready_attempts == 0 || several_brokers(st)
                         ? st.cfg.register_retry_ms
                         : protocol::capped_doubling(st.ready_wait_ms, std::max(st.cfg.register_retry_max_ms, st.cfg.register_retry_ms), 1);
  ++st.ready_attempts;
  if (st.ready_attempts == 1)
    log::info("node", "registering with the broker",
              {{"node", r.node}, {"kinds", r.kinds}, {"credit", r.credit}, {"endpoint", current_endpoint(st)}});
  else
    log::warning("node",
                 "no answer from the broker: the endpoint is unreachable, is not a Klynaa broker's cluster "
                 "endpoint, or the broker refused this node (see the broker's log); registering again with backoff",
                 {{"node", r.node}, {"endpoint", current_endpoint(st)}, {"attempt", st.ready_attempts},
                  {"retry_in_ms", st.ready_wait_ms}});
  send_msg(self, r);
}

void send_stats(gateway_ptr self) {
  auto& st = self->state;
  nlohmann::json jobs = nlohmann::json::object();
  for (const auto& [function, c] : st.jobs_by_function)
    jobs[function] = {{"ok", c.ok}, {"retry", c.retry}, {"dead", c.dead}};
  nlohmann::json kinds = nlohmann::json::array();
  for (const auto& k : st.cfg.kinds)
    kinds.push_back({{"kind", k.kind}, {"workers", k.workers}});
  nlohmann::json stats = {{"node", st.cfg.node}, {"kinds", kinds}, {"capacity", st.capacity},
                          {"held", st.held.size()}, {"running", st.cfg.busy->load()}, {"jobs", jobs},
                          {"withdrawn", st.withdrawn}};
  if (st.cfg.extra_stats) {
    try {
      stats["extra"] = st.cfg.extra_stats();
    } catch (...) {  // stats are best effort; never let them take the gateway down
    }
  }
  st.last_stats = self->clock().now();
  send_msg(self, cl::node_stats{stats.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)});
}

// -- stopping -------------------------------------------------------------------

void finish_stop(gateway_ptr self) {
  auto& st = self->state;
  cl::bye b;
  b.jobs = st.handed_back;
  for (const auto& [lease, h] : st.held)
    b.jobs.push_back(h.job_id);
  send_msg(self, b);
  log::info("node", "said bye to the broker", {{"node", st.cfg.node}, {"handed_back", b.jobs}});
  st.lf = gateway_state::life::stopped;
  st.held.clear();
  st.handed_back.clear();
  if (st.stop_promise.pending())
    st.stop_promise.deliver(caf::ok_atom::value);
}

void maybe_finish_stop(gateway_ptr self) {
  if (self->state.lf == gateway_state::life::stopping && self->state.held.empty())
    finish_stop(self);
}

// -- incoming -------------------------------------------------------------------

void on_job(gateway_ptr self, const cl::job& j, std::string frame) {
  auto& st = self->state;
  using life = gateway_state::life;
  if (st.lf == life::stopped) {
    // BYE already went out: hand this one back the same way.
    send_msg(self, cl::bye{{j.job_id}});
    return;
  }
  if (st.lf == life::stopping) {
    st.handed_back.push_back(j.job_id);
    return;
  }
  st.unused_credit = std::max<int64_t>(0, st.unused_credit - 1);
  auto pool = st.pool_of.find(j.function);
  if (pool == st.pool_of.end()) {
    log::error("node", "the broker sent a job of a function this node does not host",
               {{"job_id", j.job_id}, {"function", j.function}, {"attempt", j.attempt}, {"node", st.cfg.node},
                {"outcome", "dead"}});
    send_msg(self, failure_done(j, outcome::permanent, "not_hosted",
                                "node " + st.cfg.node + " hosts no actor kind that runs " + j.function));  // credit 1
    return;
  }
  st.held[j.lease] = {j.job_id, j.function};
  if (static_cast<int64_t>(st.held.size()) > st.capacity)
    log::warning("node", "the broker sent more jobs than this node granted; queueing them",
                 {{"node", st.cfg.node}, {"held", st.held.size()}, {"capacity", st.capacity}});
  self->send(pool->second, run_atom::value, j.lease, j.job_id, std::move(frame));
}

void on_welcome(gateway_ptr self, const cl::welcome& w) {
  auto& st = self->state;
  if (st.sess != gateway_state::session::registered)
    log::info("node", "registered with the broker",
              {{"node", st.cfg.node}, {"heartbeat_ms", w.heartbeat_ms}, {"lease_ms", w.lease_ms}});
  st.sess = gateway_state::session::registered;
  st.ready_attempts = 0;
  st.heartbeat_ms = w.heartbeat_ms;
  st.lease_ms = w.lease_ms;
  if (!w.batch)
    stop_batching(self);  // a broker that does not take them (an older one, after a failover)
  st.batch_out = w.batch;
}

void on_broker_bye(gateway_ptr self, const cl::bye& b) {
  auto& st = self->state;
  st.sess = gateway_state::session::registering;
  stop_batching(self);
  st.ready_attempts = 0;
  if (several_brokers(st)) {
    // A standby, or an active broker going down: another endpoint may be the
    // active one. READY goes there after register_retry_ms, not at once, so
    // that two standbys cannot bounce this node between them in a tight loop.
    if (b.reason != "standby")
      log::info("node", "the broker is shutting down", node_field(self));
    next_broker(self, b.reason == "standby" ? "standby" : "bye");
    st.last_ready = self->clock().now();
    st.ready_wait_ms = st.cfg.register_retry_ms;
    return;
  }
  if (b.reason == "standby")
    log::warning("node", "the broker is a standby (another broker holds the store's lease) and this node knows "
                 "no other endpoint: give --broker every broker's cluster endpoint, comma-separated",
                 {{"node", st.cfg.node}, {"endpoint", current_endpoint(st)}});
  else
    log::info("node", "the broker is shutting down; registering again", node_field(self));
  if (st.lf == gateway_state::life::running) {
    if (b.reason == "standby") {  // ask again later, not in a loop
      st.last_ready = self->clock().now();
      st.ready_wait_ms = st.cfg.register_retry_max_ms;
    } else {
      send_ready(self);  // waits in the DEALER until the broker is back
    }
  }
}

void on_frame(gateway_ptr self, std::string frame, bool in_batch = false) {
  auto& st = self->state;
  st.last_rx = self->clock().now();  // any message proves the broker alive
  std::string error;
  auto msg = cl::decode(frame.data(), frame.size(), &error);
  if (!msg) {
    log::warning("node", "ignored an invalid frame from the broker", {{"node", st.cfg.node}, {"error", error}});
    return;
  }
  if (auto* b = std::get_if<cl::batch>(&*msg)) {
    if (in_batch) {
      log::warning("node", "ignored a batch inside a batch from the broker", node_field(self));
      return;
    }
    for (auto& f : b->frames)
      on_frame(self, std::move(f), true);
    return;
  }
  if (auto* j = std::get_if<cl::job>(&*msg))
    on_job(self, *j, std::move(frame));
  else if (auto* w = std::get_if<cl::welcome>(&*msg))
    on_welcome(self, *w);
  else if (auto* b = std::get_if<cl::bye>(&*msg))
    on_broker_bye(self, *b);
  else if (!std::holds_alternative<cl::heartbeat>(*msg))
    log::warning("node", "ignored a message the broker does not send",
                 {{"node", st.cfg.node}, {"type", cl::name_of(*msg)}});
}

/// Counts a job's attempt as ok, dead or retry (transient and deferred), as the
/// broker's stats do.
void count_outcome(gateway_ptr self, const std::string& function, cl::outcome o) {
  auto& c = self->state.jobs_by_function[function];
  (o == cl::outcome::ok ? c.ok : o == cl::outcome::permanent ? c.dead : c.retry) += 1;
}

void on_done(gateway_ptr self, int64_t lease, std::string frame, int64_t code) {
  auto& st = self->state;
  using life = gateway_state::life;
  auto h = st.held.find(lease);
  if (st.lf == life::stopped) {
    // Already handed back in BYE: the broker has given it to someone else.
    log::warning("node", "a job finished after bye; dropping its result",
                 {{"node", st.cfg.node}, {"job_id", h != st.held.end() ? h->second.job_id : std::string{}}});
    return;
  }
  std::string function;
  if (h != st.held.end()) {
    function = h->second.function;
    st.held.erase(h);
  }
  // The slot is granted again with the DONE itself (its `credit`), not by a
  // CREDIT message of its own; a withdrawn kind's slots are not granted again,
  // nor any while stopping.
  bool grant = st.lf == life::running && !st.withdrawn_functions.count(function);
  if (grant && backed_up(st)) {
    grant = false;  // granted again by a later DONE or, once idle, a tick
    ++st.withheld;
  } else if (grant) {
    ++st.unused_credit;
    grant_withheld(self, 1);  // one more: the grant doubles per round of jobs
  }
  // A DONE built by a worker or pool carries credit 1 and comes with its outcome:
  // granted again, it goes out as it is, without decoding it here.
  if (auto known = outcome_of_code(code); known && grant) {
    if (!function.empty())
      count_outcome(self, function, *known);
    queue_frame(self, std::move(frame));
  } else {
    auto msg = frame.empty() ? std::nullopt : cl::decode(frame.data(), frame.size());
    auto* d = msg ? std::get_if<cl::done>(&*msg) : nullptr;
    if (d == nullptr) {  // nothing to report (or not a DONE): the slot alone
      if (!frame.empty())
        queue_frame(self, frame);
      if (grant)
        queue_frame(self, cl::encode(cl::credit{1}));
    } else {
      if (!function.empty())
        count_outcome(self, function, cl::outcome_of(*d));
      const int64_t credit = grant ? 1 : 0;
      if (d->credit == credit) {
        queue_frame(self, std::move(frame));
      } else {
        d->credit = credit;
        queue_frame(self, cl::encode(*d));
      }
    }
  }
  if (!grant)
    maybe_finish_stop(self);
}

void on_handback(gateway_ptr self, int64_t lease, std::string job_id) {
  auto& st = self->state;
  auto h = st.held.find(lease);
  std::string function = h != st.held.end() ? h->second.function : std::string{};
  st.held.erase(lease);
  if (st.lf == gateway_state::life::stopping) {
    st.handed_back.push_back(std::move(job_id));
    maybe_finish_stop(self);
    return;
  }
  if (st.lf == gateway_state::life::running && st.withdrawn_functions.count(function)) {
    // Sent before the broker knew the kind was withdrawn: give it back at once.
    for (const auto& k : st.cfg.kinds)
      if (std::find(k.functions.begin(), k.functions.end(), function) != k.functions.end())
        send_msg(self, cl::withdraw{{k.kind}, st.withdrawn[k.kind], 0, {std::move(job_id)}});
  }
}

/// A pool gave up on its kind (nodes/pool.hpp): tell the broker, which stops
/// sending that kind here and runs the handed-back jobs elsewhere.
void on_withdraw(gateway_ptr self, const std::string& kind, const std::string& reason, const std::string& handed) {
  auto& st = self->state;
  cl::withdraw w;
  w.kinds = {kind};
  w.reason = reason;
  for (const auto& k : st.cfg.kinds)
    if (k.kind == kind) {
      // The broker takes back the kind's slots, less those it does not have.
      const int64_t slots = k.workers + k.prefetch, unheld = std::min(st.withheld, slots);
      w.credit = slots - unheld;
      st.withheld -= unheld;
      st.capacity -= slots;
      st.withdrawn_functions.insert(k.functions.begin(), k.functions.end());
    }
  st.withdrawn[kind] = reason;
  auto h = nlohmann::json::parse(handed, nullptr, false);
  if (h.is_object()) {
    for (auto& l : h.value("leases", nlohmann::json::array()))
      if (l.is_number_integer())
        st.held.erase(l.get<int64_t>());
    for (auto& id : h.value("jobs", nlohmann::json::array()))
      if (id.is_string())
        w.jobs.push_back(id.get<std::string>());
  }
  log::error("node", "withdrew an actor kind from the broker",
             {{"node", st.cfg.node}, {"kind", kind}, {"reason", reason}, {"handed_back", w.jobs}});
  if (st.lf == gateway_state::life::running) {
    send_msg(self, w);
  } else {  // stopping: they go back in the BYE like the other queued jobs
    st.handed_back.insert(st.handed_back.end(), w.jobs.begin(), w.jobs.end());
    maybe_finish_stop(self);
  }
}

caf::typed_response_promise<caf::ok_atom> on_stop(gateway_ptr self, int64_t grace_ms) {
  auto& st = self->state;
  auto rp = self->make_response_promise<caf::ok_atom>();
  if (st.lf != gateway_state::life::running) {
    rp.deliver(caf::ok_atom::value);
    return rp;
  }
  log::info("node", "stopping: taking no new jobs",
            {{"node", st.cfg.node}, {"held", st.held.size()}, {"grace_ms", grace_ms}});
  st.lf = gateway_state::life::stopping;
  st.stop_deadline = self->clock().now() + milliseconds{std::max<int64_t>(0, grace_ms)};
  st.stop_promise = rp;
  for (auto& p : st.pools)
    self->send(p, drain_atom::value);
  maybe_finish_stop(self);
  return rp;
}

// -- timers ----------------------------------------------------------------------

int64_t tick_ms(const gateway_state& st) {
  return std::clamp<int64_t>(std::min(st.heartbeat_ms, st.cfg.register_retry_ms) / 4, 5, 250);
}

/// A HEARTBEAT listing the lease of every job this node holds, queued or
/// running: the broker renews them (docs/cluster-protocol.md, "Leases").
void send_heartbeat(gateway_ptr self, clock::time_point now) {
  auto& st = self->state;
  cl::heartbeat h;
  h.leases.reserve(st.held.size());
  for (const auto& entry : st.held)
    h.leases.push_back(entry.first);
  st.last_renew = now;
  send_msg(self, h);
}

void on_tick(gateway_ptr self) {
  auto& st = self->state;
  using life = gateway_state::life;
  using session = gateway_state::session;
  if (st.lf == life::stopped)
    return;  // no further tick: nothing pending when the gateway exits
  auto now = self->clock().now();
  if (st.lf == life::stopping && now >= st.stop_deadline) {
    finish_stop(self);
    return;
  }
  if (st.sess == session::registered && elapsed_ms(st.last_rx, now) > silent_heartbeats * st.heartbeat_ms) {
    log::warning("node", "the broker is silent; registering again",
                 {{"node", st.cfg.node}, {"silent_ms", elapsed_ms(st.last_rx, now)}});
    st.sess = session::registering;
    st.ready_attempts = 0;
    stop_batching(self);
    next_broker(self, "silent");  // with several brokers, a standby may have taken over
    if (st.lf == life::running)
      send_ready(self);
  }
  if (st.sess == session::registering && st.lf == life::running
      && elapsed_ms(st.last_ready, now) >= st.ready_wait_ms) {
    if (st.ready_attempts > 0)
      next_broker(self, "no answer");  // READY went unanswered: try the next broker
    send_ready(self);
  }
  if (st.sess == session::registered) {
    if (st.lf == life::running && st.cfg.stats_interval_ms > 0
        && elapsed_ms(st.last_stats, now) >= st.cfg.stats_interval_ms)
      send_stats(self);
    // DONEs keep last_tx fresh on a busy node: leases are renewed on their own clock
    const bool renew_due = !st.held.empty() && elapsed_ms(st.last_renew, now) >= std::max<int64_t>(st.lease_ms / 3, 1);
    if (renew_due || elapsed_ms(st.last_tx, now) >= st.heartbeat_ms)
      send_heartbeat(self, now);
    // An idle node whose granted slots are all used gets no DONE to grant more with.
    if (st.lf == life::running && st.withheld > 0 && st.held.empty() && st.unused_credit == 0 && !backed_up(st))
      grant_withheld(self, std::max<int64_t>(st.cfg.initial_credit, 1));
  }
  self->delayed_send(self, milliseconds{tick_ms(st)}, tick_atom::value);
}

void init(gateway_ptr self, gateway_config cfg) {
  auto& st = self->state;
  st.cfg = std::move(cfg);
  st.endpoints = io_thread::split_endpoints(st.cfg.broker_endpoint);
  st.push = std::make_unique<zmq::socket_t>(*st.cfg.ctx, zmq::socket_type::push);
  st.push->set(zmq::sockopt::linger, 0);
  st.push->set(zmq::sockopt::sndhwm, 0);  // never block a scheduler thread
  st.push->connect(st.cfg.out_endpoint);
  for (const auto& k : st.cfg.kinds) {
    st.capacity += k.workers + k.prefetch;
    auto pool = self->spawn(pool_impl, caf::actor_cast<gateway_actor>(self), pool_config{st.cfg.node, k, st.cfg.busy});
    st.pools.push_back(pool);
    for (const auto& f : k.functions)
      st.pool_of[f] = pool;
  }
  auto now = self->clock().now();
  st.last_rx = st.last_tx = st.last_stats = now;
  send_ready(self);
  self->delayed_send(self, milliseconds{tick_ms(st)}, tick_atom::value);
}

}  // namespace

gateway_actor::behavior_type gateway_impl(gateway_ptr self, gateway_config cfg) {
  init(self, std::move(cfg));
  return {
      [self](frame_atom, std::string& frame) { on_frame(self, std::move(frame)); },
      [self](done_atom, int64_t lease, std::string& frame, int64_t code) {
        on_done(self, lease, std::move(frame), code);
      },
      [self](handback_atom, int64_t lease, std::string& job_id) { on_handback(self, lease, std::move(job_id)); },
      [self](withdraw_atom, const std::string& kind, const std::string& reason, const std::string& handed) {
        on_withdraw(self, kind, reason, handed);
      },
      [self](stop_atom, int64_t grace_ms) { return on_stop(self, grace_ms); },
      [self](tick_atom) { on_tick(self); },
      [self](flush_atom) { on_flush(self); },
  };
}

gateway_actor spawn_gateway(caf::actor_system& sys, gateway_config cfg) {
  return sys.spawn(gateway_impl, std::move(cfg));
}

}  // namespace klynaa::nodes
