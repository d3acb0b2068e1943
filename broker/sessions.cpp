// The broker's side of the cluster protocol (docs/cluster-protocol.md): node
// sessions, credit, heartbeats, leases, dispatch and results.
#include "broker/core_impl.hpp"

#include "broker/backoff.hpp"

#include <algorithm>

#include "protocol/jobs.hpp"
#include "protocol/schema.hpp"
#include "protocol/log.hpp"

namespace klynaa::broker {

namespace cl = protocol::cluster;

namespace {
constexpr const char* component = "broker";
constexpr size_t max_per_poll = 4096;

std::string error_json(const std::string& kind, const std::string& code, const std::string& message,
                       int64_t http_status) {
  nlohmann::json e = {{"kind", kind}, {"code", code}, {"message", message}};
  if (http_status > 0) e["http_status"] = http_status;
  return e.dump();
}
}  // namespace

void broker_core::impl::on_cluster() {
  const int64_t now = wall_ms();
  for (size_t n = 0; n < max_per_poll; ++n) {
    zmq::message_t id;
    if (!cluster.recv(id, zmq::recv_flags::dontwait)) return;
    std::vector<zmq::message_t> rest;
    bool more = id.more();
    while (more) {
      zmq::message_t part;
      if (!cluster.recv(part, zmq::recv_flags::dontwait)) break;
      more = part.more();
      rest.push_back(std::move(part));
    }
    if (rest.size() != 1) {
      log::warning(component, "cluster message with wrong frame count ignored",
                   {{"frames", rest.size()}});
      continue;
    }
    ++link_totals.frames_received;
    handle_node_message(id.to_string(), rest[0].data(), rest[0].size(), now);
  }
}

bool broker_core::impl::send_node(const std::string& identity, const std::string& frame) {
  try {
    if (!cluster.send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      return false;
    cluster.send(zmq::buffer(frame), zmq::send_flags::none);
    ++link_totals.frames_sent;
    ++link_totals.messages_sent;
    auto it = nodes.find(identity);
    if (it != nodes.end()) it->second.last_sent = wall_ms();
    return true;
  } catch (const zmq::error_t&) {
    return false;  // EHOSTUNREACH: the node is gone
  }
}

bool broker_core::impl::flush_outbox(const std::string& identity, node_session& n) {
  if (n.outbox.empty()) return true;
  const bool sent = n.outbox.size() == 1 ? send_node(identity, n.outbox.front())
                                         : send_node(identity, cl::encode_batch(n.outbox));
  if (sent) {
    link_totals.messages_sent += static_cast<int64_t>(n.outbox.size()) - 1;
  } else {
    for (auto& id : n.outbox_jobs) {  // set running when queued: undo, uncharged
      auto* j = queue.find(id);
      if (!j || j->state != job_state::running || j->node() != identity) continue;
      --j->attempts;
      queue.retry_now(id);
      record(*j, job_state::ready);  // replaces its `running` update in the open batch
    }
  }
  n.outbox.clear();
  n.outbox_jobs.clear();
  return sent;
}

void broker_core::impl::handle_node_message(const std::string& identity, const void* data, size_t size,
                                            int64_t now, bool in_batch) {
  std::string err;
  auto msg = cl::decode(data, size, &err);
  if (!msg) {
    log::warning(component, "undecodable cluster message ignored", {{"error", err}});
    return;
  }
  ++link_totals.messages_received;
  if (auto* b = std::get_if<cl::batch>(&*msg)) {
    --link_totals.messages_received;  // the batch counts as the messages it carries
    if (in_batch) {
      log::warning(component, "a batch inside a batch ignored", {{"frames", b->frames.size()}});
      return;
    }
    unknown_node_told = false;
    for (auto& f : b->frames) handle_node_message(identity, f.data(), f.size(), now, true);
    return;
  }
  if (auto* r = std::get_if<cl::ready>(&*msg)) {
    for (auto& k : r->kinds) {
      const auto& known = protocol::actor_kinds();
      if (std::find(known.begin(), known.end(), k) == known.end()) {
        log::warning(component, "node refused: it claims an unknown actor kind",
                     {{"node", r->node}, {"kind", k}});
        return;  // not registered: it gets no work and disturbs no one
      }
    }
    if (nodes.count(identity)) drop_node(identity, "re-registered", now);
    node_session s;
    s.identity = identity;
    s.name = r->node;
    s.kinds.insert(r->kinds.begin(), r->kinds.end());
    s.credit = r->credit;
    s.batch = r->batch;
    s.last_seen = now;
    nodes[identity] = std::move(s);
    cl::welcome w;
    w.heartbeat_ms = opts.cfg.cluster.heartbeat_ms;
    w.lease_ms = opts.cfg.cluster.lease_ms;
    w.batch = true;
    send_node(identity, cl::encode(cl::message(w)));
    log::info(component, "node registered", {{"node", r->node}, {"kinds", r->kinds}, {"credit", r->credit}});
    return;
  }
  auto it = nodes.find(identity);
  if (it == nodes.end()) {
    // A node we do not know (we restarted, or dropped it): ask it to register,
    // once per frame (a BATCH of its DONEs gets one BYE, not one each).
    if (!in_batch || !unknown_node_told) send_node(identity, cl::encode(cl::message(cl::bye{})));
    if (in_batch) unknown_node_told = true;
    return;
  }
  auto& n = it->second;
  n.last_seen = now;
  if (auto* d = std::get_if<cl::done>(&*msg)) {
    n.credit += d->credit;  // even for a late result: the node's slot is free
    on_done(n, *d, now);
  } else if (auto* c = std::get_if<cl::credit>(&*msg)) {
    n.credit += std::max<int64_t>(0, c->n);
  } else if (auto* b = std::get_if<cl::bye>(&*msg)) {
    log::info(component, "node left", {{"node", n.name}, {"handed_back", b->jobs.size()}});
    drop_node(identity, "said bye", now);
  } else if (auto* w = std::get_if<cl::withdraw>(&*msg)) {
    // The node's supervisor gave up on these kinds: send it none of them again
    // (until it registers anew) and run the jobs it hands back elsewhere.
    int64_t returned = 0;
    for (auto& k : w->kinds) {
      n.kinds.erase(k);
      n.withdrawn[k] = w->reason;
    }
    for (auto& id : w->jobs) {
      auto* j = queue.find(id);
      if (!j || j->state != job_state::running || j->node() != identity) continue;
      ++returned;
      lose_job(id, "node " + n.name + " withdrew " + j->kind + ": " + w->reason, now);
    }
    n.credit = std::max<int64_t>(0, n.credit + returned - w->credit);
    log::warning(component, "node withdrew actor kinds", {{"node", n.name}, {"kinds", w->kinds},
                                                          {"reason", w->reason}, {"jobs_returned", returned}});
  } else if (auto* s = std::get_if<cl::node_stats>(&*msg)) {
    auto j = nlohmann::json::parse(s->json, nullptr, false);
    if (j.is_object()) n.stats = std::move(j);
  } else if (auto* h = std::get_if<cl::heartbeat>(&*msg)) {
    // The jobs the node holds, queued or running: their leases live on as long
    // as the node does (docs/cluster-protocol.md, "Leases").
    queue.renew_leases(identity, h->leases, now + opts.cfg.cluster.lease_ms);
  }
}

int64_t broker_core::impl::retry_delay(const std::string& function, int64_t attempts,
                                       int64_t retry_after_ms) {
  return backoff_delay(opts.cfg.retry_for(function), attempts, retry_after_ms, rng);
}

void broker_core::impl::on_done(node_session& n, const cl::done& d, int64_t now) {
  auto* j = queue.find(d.job_id);
  if (!j || j->state != job_state::running || j->lease != d.lease) {
    log::warning(component, "late result ignored: the job's lease was taken back",
                 {{"job_id", d.job_id}, {"node", n.name}, {"lease", d.lease}});
    return;
  }
  if (n.running > 0) --n.running;
  if (j->fanout)
    fanout_done(n, *j, d, now);
  else
    complete(*j, d, now);
}

// A fan-out job is done when every geo node it was sent to has answered (or
// left); its outcome is the worst of theirs, and it counts once.
void broker_core::impl::fanout_done(node_session& n, live_job& j, const cl::done& d, int64_t now) {
  auto& r = j.run();
  r.fanout_wait.erase(n.identity);
  if (d.outcome != "ok" && !r.fanout_permanent) {
    r.fanout_error = d.error_message.empty() ? d.outcome : d.error_message;
    r.fanout_permanent = d.outcome == "permanent";
  }
  if (!r.fanout_todo.empty() || !r.fanout_wait.empty()) return;
  cl::done all;
  all.job_id = j.id;
  all.lease = j.lease;
  all.outcome = r.fanout_error.empty() ? "ok" : (r.fanout_permanent ? "permanent" : "transient");
  all.error_code = r.fanout_error.empty() ? "" : "fanout";
  all.error_message = r.fanout_error;
  all.result_json = "{}";
  all.duration_ms = now - j.started_ms;
  fanouts.erase(j.id);
  j.fanout = false;
  complete(j, all, now);
}

void broker_core::impl::fanout_forget_node(const std::string& identity, int64_t now) {
  std::vector<std::string> ids(fanouts.begin(), fanouts.end());
  for (auto& id : ids) {
    auto* j = queue.find(id);
    if (!j) {
      fanouts.erase(id);
      continue;
    }
    auto& r = j->run();
    bool had = r.fanout_todo.erase(identity) + r.fanout_wait.erase(identity) > 0;
    if (had && r.fanout_todo.empty() && r.fanout_wait.empty()) {
      cl::done none;  // the last node left: what the others said stands
      none.job_id = j->id;
      none.lease = j->lease;
      none.outcome = "ok";
      node_session ghost;
      ghost.identity = identity;
      fanout_done(ghost, *j, none, now);
    }
  }
}

void broker_core::impl::start_fanout(live_job& j, int64_t now) {
  j.fanout = true;
  auto& r = j.run();
  r.fanout_todo.clear();
  r.fanout_wait.clear();
  r.fanout_error.clear();
  r.fanout_permanent = false;
  for (auto& [id, n] : nodes)
    if (n.kinds.count(j.kind)) {
      r.fanout_todo.insert(id);
      n.fanout_sends.push_back(j.id);
    }
  queue.set_running(j, "*", "*", ++lease_counter, now + opts.cfg.cluster.lease_ms, now);
  // Not stored as running: after a restart a fan-out goes to every geo node
  // again whatever its stored state, and applying a location twice is harmless;
  // the store's one write for it is its end (a third of the writer's work per
  // job at full load, docs/performance.md).
  fanouts.insert(j.id);
}

void broker_core::impl::complete(live_job& jr, const cl::done& d, int64_t now) {
  auto* j = &jr;
  const auto policy = opts.cfg.retry_for(j->function);
  const std::string function = j->function;
  finished_note note;
  note.job_id = j->id;
  std::string outcome;
  if (d.outcome == "ok") {
    outcome = "ok";
    note.status = protocol::reply_status::ok;
    note.result_json = d.result_json;
    for (auto& c : d.children) {
      job_record r;
      r.id = c.job_id;
      r.request_id = j->request_id;
      r.function = c.function;
      r.data_json = c.data_json;
      auto data = nlohmann::json::parse(c.data_json, nullptr, false);
      r.ordering_key = data.is_object() ? protocol::ordering_key_of(data) : std::string();
      r.seq = next_seq();
      r.due_ms = c.due_ms;
      r.ts_ms = j->ts_ms;
      r.created_ms = now;
      current.b.children.push_back(std::move(r));
    }
    auto& u = record(*j, job_state::done, "ok", "", d.result_json, d.duration_ms);
    if (function == "cleanupData") start_prune(u, note, now);
    queue.finish(j->id, job_state::done);
  } else if (d.outcome == "transient" && d.error_code == "circuit_open") {
    // Not run at all: the node's breaker for the downstream is open. The job
    // waits for it without using an attempt (actors/breaker.hpp).
    if (j->attempts > j->attempt_base) --j->attempts;
    const int64_t due = now + circuit_open_delay(d.retry_after_ms);
    log::info(component, "job waits for an open circuit breaker; the attempt is not counted",
              {{"job_id", j->id}, {"function", j->function}, {"error", d.error_message},
               {"next_run", log::iso8601_utc_ms(due)}});
    queue.retry_later(j->id, due);
    record(*j, job_state::retry_wait);  // no history entry: nothing ran
    ++outcomes[function]["retry"];
    return;
  } else {
    const bool permanent = d.outcome == "permanent";
    const bool exhausted = !permanent && j->attempts - j->attempt_base >= policy.max_attempts;
    const std::string kind = permanent ? "permanent" : (exhausted ? "exhausted" : "transient");
    auto err = error_json(kind, d.error_code, d.error_message, d.http_status);
    if (permanent || exhausted) {
      outcome = "dead";
      note.status = protocol::reply_status::failed;
      protocol::error_info e;
      e.code = permanent ? "permanent" : "exhausted";
      e.message = exhausted ? "gave up after " + std::to_string(j->attempts - j->attempt_base) +
                                  " attempts; last error: " + d.error_message
                            : d.error_message;
      if (d.http_status > 0) e.http_status = static_cast<int>(d.http_status);
      note.error = e;
      record(*j, job_state::dead, "dead", err, "", d.duration_ms);
      note_failure(*j, "dead", d.error_code, d.error_message, now);
      ++dead_total;  // dead_letters follows the store: count_dead_letters()
      log::warning(component, "job dead", {{"job_id", j->id}, {"function", j->function},
                                           {"attempt", j->attempts}, {"error", d.error_message}});
      queue.finish(j->id, job_state::dead);
    } else {
      outcome = "retry";
      int64_t due = now + retry_delay(j->function, j->attempts - j->attempt_base, d.retry_after_ms);
      note_failure(*j, "retry", d.error_code, d.error_message, now);
      log::info(component, "job will retry", {{"job_id", j->id}, {"function", j->function},
                                              {"attempt", j->attempts}, {"error", d.error_message},
                                              {"next_run", log::iso8601_utc_ms(due)},
                                              {"retry_in_ms", due - now}});
      queue.retry_later(j->id, due);
      record(*j, job_state::retry_wait, "retry", err, "", d.duration_ms);
    }
  }
  ++outcomes[function][outcome];
  durations[function].observe(static_cast<double>(d.duration_ms) / 1000.0);
  if (outcome != "retry" && !(outcome == "ok" && function == "cleanupData"))
    current.finished.push_back(std::move(note));
}

void broker_core::impl::lose_job(const std::string& job_id, const std::string& why, int64_t now) {
  auto* j = queue.find(job_id);
  if (!j || j->state != job_state::running) return;
  if (j->fanout) {  // sent again to every geo node (applying an update twice is harmless)
    j->fanout = false;
    fanouts.erase(job_id);
  }
  const auto policy = opts.cfg.retry_for(j->function);
  auto err = error_json("transient", "lost", why, 0);
  if (j->attempts - j->attempt_base >= policy.max_attempts) {
    finished_note note;
    note.job_id = j->id;
    note.status = protocol::reply_status::failed;
    note.error = protocol::error_info{"exhausted", "gave up after " + std::to_string(j->attempts - j->attempt_base) +
                                                       " attempts; last: " + why, "", std::nullopt};
    record(*j, job_state::dead, "dead", error_json("exhausted", "lost", why, 0));
    note_failure(*j, "dead", "lost", why, now);
    ++dead_total;  // dead_letters follows the store: count_dead_letters()
    ++outcomes[j->function]["dead"];
    queue.finish(job_id, job_state::dead);
    current.finished.push_back(std::move(note));
    return;
  }
  log::warning(component, "job lease lost; it runs again", {{"job_id", job_id}, {"reason", why}});
  note_failure(*j, "retry", "lost", why, now);
  ++outcomes[j->function]["retry"];
  queue.retry_now(job_id);
  record(*queue.find(job_id), job_state::ready, "lost", err);
  (void)now;
}

void broker_core::impl::drop_node(std::string identity, const std::string& why, int64_t now) {
  auto it = nodes.find(identity);
  if (it == nodes.end()) return;
  std::vector<std::string> held;
  // Collect first: lose_job changes the queue.
  for (auto& id : queue.expired_leases(INT64_MAX)) {
    auto* j = queue.find(id);
    if (j && j->node() == identity) held.push_back(id);
  }
  log::info(component, "node dropped", {{"node", it->second.name}, {"reason", why},
                                        {"jobs_returned", held.size()}});
  nodes.erase(it);
  for (auto& id : held) lose_job(id, "node " + why, now);
  fanout_forget_node(identity, now);
}

void broker_core::impl::check_nodes(int64_t now) {
  std::vector<std::string> dead;
  for (auto& [id, n] : nodes) {
    if (now - n.last_seen > opts.cfg.cluster.node_timeout_ms) dead.push_back(id);
    else if (now - n.last_sent >= opts.cfg.cluster.heartbeat_ms)
      send_node(id, cl::encode(cl::message(cl::heartbeat{})));
  }
  for (auto& id : dead) drop_node(id, "timed out", now);
  for (auto& id : queue.expired_leases(now)) lose_job(id, "lease expired", now);
}

bool broker_core::impl::send_job(const std::string& identity, node_session& n, live_job& j,
                                  int64_t now) {
  cl::job m;
  m.job_id = j.id;
  m.function = j.function;
  m.data_json = j.data_json;
  m.attempt = j.fanout ? j.attempts : j.attempts + 1;
  m.lease = j.fanout ? j.lease : lease_counter + 1;
  m.ts_ms = j.ts_ms;
  const int64_t lease = m.lease;
  auto frame = cl::encode(cl::message(std::move(m)));  // no copy of the job's data
  if (!n.batch && !send_node(identity, frame)) return false;
  if (j.fanout) {
    j.run().fanout_todo.erase(identity);
    j.run().fanout_wait.insert(identity);
  } else {
    ++lease_counter;
    queue.set_running(j, identity, n.name, lease, now + opts.cfg.cluster.lease_ms, now);
    record(j, job_state::running);
  }
  --n.credit;
  ++n.running;
  if (n.batch) {  // sent at the end of the dispatch pass, with the others of this node
    n.outbox.push_back(std::move(frame));
    if (!j.fanout) n.outbox_jobs.push_back(j.id);
    if (n.outbox.size() >= cl::max_batch && !flush_outbox(identity, n)) return false;
  }
  return true;
}

// Round-robin over nodes with credit: first the fan-out jobs a node still has to
// apply, then the next runnable job of a kind it hosts. Each pass starts after
// the node that got the last job (dispatch_from), across calls too.
void broker_core::impl::dispatch(int64_t now) {
  bool progress = true;
  while (progress) {
    progress = false;
    auto next = nodes.lower_bound(dispatch_from);  // every node once, from there, wrapping
    for (size_t k = 0, total = nodes.size(); k < total; ++k) {
      if (next == nodes.end()) next = nodes.begin();
      auto current = next++;
      const std::string& identity = current->first;
      auto& n = current->second;
      if (n.credit <= 0) continue;
      live_job* j = nullptr;
      while (!j && !n.fanout_sends.empty()) {
        auto* f = queue.find(n.fanout_sends.front());
        n.fanout_sends.pop_front();
        if (f && f->fanout && f->fanout_sends_to(identity)) j = f;
      }
      if (!j) {
        j = queue.next_runnable(n.kinds);
        if (j && protocol::is_fanout(j->function)) start_fanout(*j, now);
      }
      if (!j) continue;
      if (!send_job(identity, n, *j, now)) {
        if (!j->fanout && !n.batch) queue.retry_now(j->id);  // batch: flush_outbox put it back
        drop_node(identity, "unreachable", now);
        progress = false;
        break;  // nodes changed under the loop; what the others got is sent below
      }
      progress = true;
      dispatch_from = next == nodes.end() ? std::string() : next->first;  // the one after starts the next pass
    }
  }
  std::vector<std::string> unreachable;
  for (auto& [identity, n] : nodes)
    if (!flush_outbox(identity, n)) unreachable.push_back(identity);
  for (auto& identity : unreachable) drop_node(identity, "unreachable", now);
}

}  // namespace klynaa::broker
