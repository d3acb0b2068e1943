// The dispatcher (dispatcher.hpp): node sessions, credit, leases, fan-out and
// outboxes, in the order of docs/cluster-protocol.md.
#include "broker/dispatcher.hpp"

#include <algorithm>
#include <climits>

#include "protocol/jobs.hpp"
#include "protocol/log.hpp"
#include "protocol/schema.hpp"

namespace klynaa::broker {

namespace cl = protocol::cluster;

namespace {
constexpr const char* component = "broker";
}  // namespace

dispatcher::dispatcher(job_queue& queue, const protocol::config& cfg, dispatcher_host& host)
    : queue_(queue), cfg_(cfg), host_(host) {}

bool dispatcher::send(const std::string& identity, const std::string& frame) {
  if (!host_.send_frame(identity, frame)) return false;
  ++link_.frames_sent;
  ++link_.messages_sent;
  auto it = nodes_.find(identity);
  if (it != nodes_.end()) it->second.last_sent = now_;
  return true;
}

void dispatcher::say_bye() {
  auto frame = cl::encode(cl::message(cl::bye{}));
  for (auto& [id, n] : nodes_) send(id, frame);
}

void dispatcher::on_frame(const std::string& identity, const void* data, size_t size, int64_t now) {
  now_ = now;
  ++link_.frames_received;
  handle(identity, data, size, now, false);
}

void dispatcher::handle(const std::string& identity, const void* data, size_t size, int64_t now, bool in_batch) {
  std::string err;
  auto msg = cl::decode(data, size, &err);
  if (!msg) {
    log::warning(component, "undecodable cluster message ignored", {{"error", err}});
    return;
  }
  if (auto* b = std::get_if<cl::batch>(&*msg)) {  // counts as the messages it carries
    if (in_batch) {
      log::warning(component, "a batch inside a batch ignored", {{"frames", b->frames.size()}});
      return;
    }
    unknown_node_told_ = false;
    for (auto& f : b->frames) handle(identity, f.data(), f.size(), now, true);
    return;
  }
  ++link_.messages_received;
  if (auto* r = std::get_if<cl::ready>(&*msg)) return on_ready(identity, *r, now);
  auto it = nodes_.find(identity);
  if (it == nodes_.end()) {
    // A node we do not know (we restarted, or dropped it): ask it to register,
    // once per frame (a BATCH of its DONEs gets one BYE, not one each).
    if (!in_batch || !unknown_node_told_) send(identity, cl::encode(cl::message(cl::bye{})));
    if (in_batch) unknown_node_told_ = true;
    return;
  }
  auto& n = it->second;
  n.last_seen = now;
  if (auto* d = std::get_if<cl::done>(&*msg)) {
    n.credit += d->credit;  // even for a late result: the node's slot is free
    on_done(n, *d, now);
  } else if (auto* c = std::get_if<cl::credit>(&*msg)) {
    n.credit += std::max<int64_t>(0, c->n);
  } else if (auto* bye = std::get_if<cl::bye>(&*msg)) {
    log::info(component, "node left", {{"node", n.name}, {"handed_back", bye->jobs.size()}});
    drop_node(identity, "said bye", now);
  } else if (auto* w = std::get_if<cl::withdraw>(&*msg)) {
    on_withdraw(n, *w, now);
  } else if (auto* s = std::get_if<cl::node_stats>(&*msg)) {
    auto j = nlohmann::json::parse(s->json, nullptr, false);
    if (j.is_object()) n.stats = std::move(j);
  } else if (auto* h = std::get_if<cl::heartbeat>(&*msg)) {
    // The jobs the node holds, queued or running: their leases live on as long
    // as the node does (docs/cluster-protocol.md, "Leases").
    queue_.renew_leases(identity, h->leases, now + cfg_.cluster.lease_ms);
  }
}

void dispatcher::on_ready(const std::string& identity, const cl::ready& r, int64_t now) {
  for (auto& k : r.kinds) {
    const auto& known = protocol::actor_kinds();
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      log::warning(component, "node refused: it claims an unknown actor kind", {{"node", r.node}, {"kind", k}});
      return;  // not registered: it gets no work and disturbs no one
    }
  }
  if (nodes_.count(identity)) drop_node(identity, "re-registered", now);
  node_session s;
  s.identity = identity;
  s.name = r.node;
  s.kinds.insert(r.kinds.begin(), r.kinds.end());
  s.credit = r.credit;
  s.batch = r.batch;
  s.last_seen = now;
  nodes_[identity] = std::move(s);
  cl::welcome w;
  w.heartbeat_ms = cfg_.cluster.heartbeat_ms;
  w.lease_ms = cfg_.cluster.lease_ms;
  w.batch = true;
  send(identity, cl::encode(cl::message(w)));
  log::info(component, "node registered", {{"node", r.node}, {"kinds", r.kinds}, {"credit", r.credit}});
}

// The node's supervisor gave up on these kinds: send it none of them again
// (until it registers anew) and run the jobs it hands back elsewhere
// (docs/cluster-protocol.md, "WITHDRAW").
void dispatcher::on_withdraw(node_session& n, const cl::withdraw& w, int64_t now) {
  const std::string identity = n.identity;
  int64_t returned = 0;
  for (auto& k : w.kinds) {
    n.kinds.erase(k);
    n.withdrawn[k] = w.reason;
  }
  for (auto& id : w.jobs) {
    auto* j = queue_.find(id);
    if (!j || j->state != job_state::running || j->node() != identity) continue;
    ++returned;
    lose(id, "node " + n.name + " withdrew " + j->kind + ": " + w.reason, now);
  }
  n.credit = std::max<int64_t>(0, n.credit + returned - w.credit);
  log::warning(component, "node withdrew actor kinds",
               {{"node", n.name}, {"kinds", w.kinds}, {"reason", w.reason}, {"jobs_returned", returned}});
}

void dispatcher::on_done(node_session& n, const cl::done& d, int64_t now) {
  auto* j = queue_.find(d.job_id);
  if (!j || j->state != job_state::running || j->lease != d.lease) {
    log::warning(component, "late result ignored: the job's lease was taken back",
                 {{"job_id", d.job_id}, {"node", n.name}, {"lease", d.lease}});
    return;
  }
  if (n.running > 0) --n.running;
  if (j->fanout)
    fanout_done(n.identity, *j, d, now);
  else
    host_.job_done(*j, d, now);
}

cl::done fanout_result(const live_job& j, int64_t now) {
  static const live_job::run_info nothing_run;
  const auto& r = j.run_if() ? *j.run_if() : nothing_run;
  cl::done all;
  all.job_id = j.id;
  all.lease = j.lease;
  cl::set_outcome(all, r.fanout_error.empty() ? cl::outcome::ok
                                               : (r.fanout_permanent ? cl::outcome::permanent : cl::outcome::transient));
  all.error_code = r.fanout_error.empty() ? "" : "fanout";
  all.error_message = r.fanout_error;
  all.result_json = "{}";
  all.duration_ms = now - j.started_ms;
  return all;
}

// A fan-out job is done when every geo node it was sent to has answered (or
// left); its outcome is the worst of theirs, and it counts once.
void dispatcher::fanout_done(const std::string& identity, live_job& j, const cl::done& d, int64_t now) {
  auto& r = j.run();
  r.fanout_wait.erase(identity);
  const cl::outcome o = cl::outcome_of(d);
  if (o != cl::outcome::ok && !r.fanout_permanent) {
    r.fanout_error = d.error_message.empty() ? cl::to_string(o) : d.error_message;
    r.fanout_permanent = o == cl::outcome::permanent;
  }
  if (!r.fanout_todo.empty() || !r.fanout_wait.empty()) return;
  auto all = fanout_result(j, now);
  fanouts_.erase(j.id);
  j.fanout = false;
  host_.job_done(j, all, now);
}

void dispatcher::fanout_forget_node(const std::string& identity, int64_t now) {
  std::vector<std::string> ids(fanouts_.begin(), fanouts_.end());
  for (auto& id : ids) {
    auto* j = queue_.find(id);
    if (!j) {
      fanouts_.erase(id);
      continue;
    }
    auto& r = j->run();
    bool had = r.fanout_todo.erase(identity) + r.fanout_wait.erase(identity) > 0;
    if (had && r.fanout_todo.empty() && r.fanout_wait.empty()) {
      cl::done none;  // the last node left: what the others said stands
      none.job_id = j->id;
      none.lease = j->lease;
      cl::set_outcome(none, cl::outcome::ok);
      fanout_done(identity, *j, none, now);
    }
  }
}

void dispatcher::start_fanout(live_job& j, int64_t now) {
  j.fanout = true;
  auto& r = j.run();
  r.fanout_todo.clear();
  r.fanout_wait.clear();
  r.fanout_error.clear();
  r.fanout_permanent = false;
  for (auto& [id, n] : nodes_)
    if (n.kinds.count(j.kind)) {
      r.fanout_todo.insert(id);
      n.fanout_sends.push_back(j.id);
    }
  queue_.set_running(j, "*", "*", ++lease_counter_, now + cfg_.cluster.lease_ms, now);
  // Not stored as running: after a restart a fan-out goes to every geo node
  // again whatever its stored state, and applying a location twice is harmless;
  // the store's one write for it is its end (a third of the writer's work per
  // job at full load, docs/performance.md).
  fanouts_.insert(j.id);
}

void dispatcher::lose(const std::string& job_id, const std::string& why, int64_t now) {
  auto* j = queue_.find(job_id);
  if (!j || j->state != job_state::running) return;
  if (j->fanout) {  // sent again to every geo node (applying an update twice is harmless)
    j->fanout = false;
    fanouts_.erase(job_id);
  }
  host_.job_lost(*j, why, now);
}

void dispatcher::drop_node(std::string identity, const std::string& why, int64_t now) {
  auto it = nodes_.find(identity);
  if (it == nodes_.end()) return;
  std::vector<std::string> held;
  // Collect first: losing a job changes the queue.
  for (auto& id : queue_.expired_leases(INT64_MAX)) {
    auto* j = queue_.find(id);
    if (j && j->node() == identity) held.push_back(id);
  }
  log::info(component, "node dropped", {{"node", it->second.name}, {"reason", why}, {"jobs_returned", held.size()}});
  nodes_.erase(it);
  for (auto& id : held) lose(id, "node " + why, now);
  fanout_forget_node(identity, now);
}

void dispatcher::check_nodes(int64_t now) {
  now_ = now;
  std::vector<std::string> dead;
  for (auto& [id, n] : nodes_) {
    if (now - n.last_seen > cfg_.cluster.node_timeout_ms)
      dead.push_back(id);
    else if (now - n.last_sent >= cfg_.cluster.heartbeat_ms)
      send(id, cl::encode(cl::message(cl::heartbeat{})));
  }
  for (auto& id : dead) drop_node(id, "timed out", now);
  for (auto& id : queue_.expired_leases(now)) lose(id, "lease expired", now);
}

bool dispatcher::flush_outbox(const std::string& identity, node_session& n) {
  if (n.outbox.empty()) return true;
  const bool sent = n.outbox.size() == 1 ? send(identity, n.outbox.front()) : send(identity, cl::encode_batch(n.outbox));
  if (sent) {
    link_.messages_sent += static_cast<int64_t>(n.outbox.size()) - 1;
  } else {
    for (auto& id : n.outbox_jobs) {  // set running when queued: undo, uncharged
      auto* j = queue_.find(id);
      if (!j || j->state != job_state::running || j->node() != identity) continue;
      --j->attempts;
      queue_.retry_now(id);
      host_.job_changed(*j, job_state::ready);  // replaces its `running` update in the open batch
    }
  }
  n.outbox.clear();
  n.outbox_jobs.clear();
  return sent;
}

bool dispatcher::send_job(const std::string& identity, node_session& n, live_job& j, int64_t now) {
  cl::job m;
  m.job_id = j.id;
  m.function = j.function;
  m.data_json = j.data_json;
  m.attempt = j.fanout ? j.attempts : j.attempts + 1;
  m.lease = j.fanout ? j.lease : lease_counter_ + 1;
  m.ts_ms = j.ts_ms;
  const int64_t lease = m.lease;
  auto frame = cl::encode(cl::message(std::move(m)));  // no copy of the job's data
  if (!n.batch && !send(identity, frame)) return false;
  if (j.fanout) {
    j.run().fanout_todo.erase(identity);
    j.run().fanout_wait.insert(identity);
  } else {
    ++lease_counter_;
    queue_.set_running(j, identity, n.name, lease, now + cfg_.cluster.lease_ms, now);
    host_.job_changed(j, job_state::running);
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

live_job* dispatcher::next_job_for(const std::string& identity, node_session& n, int64_t now) {
  while (!n.fanout_sends.empty()) {
    auto* f = queue_.find(n.fanout_sends.front());
    n.fanout_sends.pop_front();
    if (f && f->fanout && f->fanout_sends_to(identity)) return f;
  }
  live_job* j = queue_.next_runnable(n.kinds);
  if (j && protocol::is_fanout(j->function)) start_fanout(*j, now);
  return j;
}

// Round robin over nodes with credit. Each pass starts after the node that got
// the last job (dispatch_from_), across calls too.
void dispatcher::dispatch(int64_t now) {
  now_ = now;
  bool progress = true;
  while (progress) {
    progress = false;
    auto next = nodes_.lower_bound(dispatch_from_);  // every node once, from there, wrapping
    for (size_t k = 0, total = nodes_.size(); k < total; ++k) {
      if (next == nodes_.end()) next = nodes_.begin();
      auto current = next++;
      const std::string& identity = current->first;
      auto& n = current->second;
      if (n.credit <= 0) continue;
      live_job* j = next_job_for(identity, n, now);
      if (!j) continue;
      if (!send_job(identity, n, *j, now)) {
        if (!j->fanout && !n.batch) queue_.retry_now(j->id);  // batch: flush_outbox put it back
        drop_node(identity, "unreachable", now);
        progress = false;
        break;  // nodes changed under the loop; what the others got is sent below
      }
      progress = true;
      dispatch_from_ = next == nodes_.end() ? std::string() : next->first;  // the one after starts the next pass
    }
  }
  std::vector<std::string> unreachable;
  for (auto& [identity, n] : nodes_)
    if (!flush_outbox(identity, n)) unreachable.push_back(identity);
  for (auto& identity : unreachable) drop_node(identity, "unreachable", now);
}

}  // namespace klynaa::broker
