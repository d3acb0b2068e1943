// The open batch and its commit (core_impl.hpp): what goes into the next group
// commit, and what a commit's outcome answers — replies, new live jobs,
// waiters, pruning, dead-letter commands. Nothing is acknowledged, and no job
// runs, before the commit that holds it (core.hpp).
#include "broker/core_impl.hpp"

#include <algorithm>

#include "protocol/backoff.hpp"
#include "protocol/jobs.hpp"
#include "protocol/schema.hpp"
#include "protocol/log.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "broker";
}  // namespace

void broker_core::impl::add_live(job_record r, int64_t now) {
  live_job j;
  j.id = std::move(r.id);
  j.request_id = std::move(r.request_id);
  j.kind = std::string(protocol::actor_of(r.function));
  j.function = std::move(r.function);
  j.data_json = std::move(r.data_json);
  j.okey = std::move(r.ordering_key);
  j.seq = r.seq;
  j.due_ms = r.due_ms;
  j.ts_ms = r.ts_ms;
  j.attempts = r.attempts;
  j.attempt_base = r.attempt_base;
  j.state = r.state;
  j.auto_release = r.auto_release;
  queue.add(std::move(j), now);
}

job_update& broker_core::impl::record(live_job& j, job_state s, const std::string& outcome,
                                      const std::string& error_json, const std::string& result_json,
                                      int64_t duration_ms) {
  auto& updates = current.b.updates;
  job_update* slot = nullptr;
  if (j.upd_gen == batch_gen && j.upd_idx < updates.size() && updates[j.upd_idx].id == j.id &&
      updates[j.upd_idx].outcome.empty()) {
    slot = &updates[j.upd_idx];  // both land in one transaction: the older one says nothing more
  } else {
    j.upd_gen = batch_gen;
    j.upd_idx = static_cast<uint32_t>(updates.size());
    slot = &updates.emplace_back();
  }
  job_update& u = *slot;
  u.id = j.id;
  u.state = s;
  u.attempts = j.attempts;
  u.due_ms = j.due_ms;
  u.seq = j.seq;
  u.last_error_json = error_json;
  u.result_json = result_json;
  u.node = j.node_name();
  u.outcome = outcome;
  u.duration_ms = duration_ms;
  return u;
}

void broker_core::impl::maybe_submit() {
  if (writer->busy() || committing) return;
  if (commit_failures > 0) {  // the store failed: back off, and probe it if nothing else is due
    if (now_ms() < next_commit_ms) return;
    if (current.empty()) current.b.probe = true;
  }
  if (pruning && !draining && !current.b.prune_before_ms) current.b.prune_before_ms = pruning->before_ms;
  if (current.empty()) return;
  committing = std::move(current);
  current = open_batch{};
  committing->submitted_us = steady_us();
  writer->submit(committing->b);  // by reference: it stays for the replies and a retry
  ++batch_gen;  // record() no longer merges into the batch that left
}

void broker_core::impl::on_commit() {
  zmq::message_t m;
  while (writer_notify.recv(m, zmq::recv_flags::dontwait)) {
  }
  auto r = writer->take();
  if (!r || !committing) return;
  commit_points = {0, committing->submitted_us, r->start_us, r->end_us, steady_us(), 0};
  open_batch ob = std::move(*committing);
  committing.reset();
  auto& totals = counters.store;
  ++totals.commits;
  totals.requests += static_cast<int64_t>(ob.b.requests.size());
  totals.updates += static_cast<int64_t>(ob.b.updates.size());
  totals.commit_us += r->commit_us;
  if (r->outcome)
    apply_commit(ob, *r->outcome);
  else
    fail_commit(ob, r->error);
}

// One committed request: its jobs go live, and its client hears `accepted`
// (an invoke waits for its job's end instead) or `duplicate`.
void broker_core::impl::answer_request(const pending_request& p, const request_outcome& o, new_request& nr,
                                       int64_t now) {
  for (auto& id : o.cancelled) queue.finish(id, job_state::cancelled);
  if (p.internal) {
    for (auto k : o.created) add_live(std::move(nr.jobs[k]), now);
    return;
  }
  if (o.duplicate) return answer_duplicate(p, o);
  for (auto k : o.created) add_live(std::move(nr.jobs[k]), now);
  ++counters.ingress["accepted"];
  if (p.op == protocol::op::invoke && !o.job_ids.empty()) return add_waiter(p, o.job_ids.front());
  protocol::reply rep;
  rep.id = p.id;
  rep.status = protocol::reply_status::accepted;
  rep.jobs = o.job_ids;
  send_reply(p.client, rep);
  ack_points at = commit_points;
  at.received = p.received_us;
  at.sent = steady_us();
  timeline.observe(at);
}

void broker_core::impl::apply_commit(open_batch& ob, const commit_outcome& out) {
  const int64_t now = now_ms();
  if (commit_failures > 0) log::info(component, "the store commits again", {{"failed_commits", commit_failures}});
  commit_failures = 0;
  for (size_t i = 0; i < ob.reqs.size() && i < out.requests.size(); ++i)
    answer_request(ob.reqs[i], out.requests[i], ob.b.requests[i], now);
  for (size_t i = 0; i < ob.b.children.size() && i < out.children_inserted.size(); ++i)
    if (out.children_inserted[i]) add_live(std::move(ob.b.children[i]), now);
  for (auto& n : ob.finished) notify_waiters(n);
  if (ob.b.prune_before_ms && pruning) prune_committed(out);
  if (ob.dlq) dlq_committed(ob, out, now);
  count_dead_letters(ob.b, out);
}

// The one place dead_letters changes after open(): by what a commit moved into
// the dead-letter queue (updates to `dead`, whatever the path: a permanent
// failure, attempts exhausted on a DONE or a lost lease, a fan-out's outcome) and
// out of it (replayed, purged). So the gauge is the store's count, which is what
// `klynaa dlq list` reads, and never counts a death the store does not hold yet.
void broker_core::impl::count_dead_letters(const batch& b, const commit_outcome& out) {
  int64_t delta = 0;
  for (auto& u : b.updates)
    if (u.state == job_state::dead) ++delta;  // a live job's update: it was not dead before
  delta -= static_cast<int64_t>(out.replayed.size() + out.purged.size());
  if (delta == 0) return;
  dead_letters += delta;
  std::lock_guard<std::mutex> lk(snapshot_mu);  // at once, not with the next stats (250 ms)
  snapshot.dead_letters = dead_letters;
}

void broker_core::impl::fail_commit(open_batch& ob, const store_error& err) {
  // Back off (100 ms doubling to 2 s) so that a full disk is not retried in a
  // tight loop; log the first failure and then every 20th.
  ++commit_failures;
  last_commit_error = err.message;
  next_commit_ms = now_ms() + protocol::capped_doubling(100, 2000, commit_failures - 1);
  if (commit_failures == 1 || commit_failures % 20 == 0)
    log::error(component, "store commit failed; requests of the batch are rejected",
               {{"error", err.message}, {"requests", ob.reqs.size()}, {"failed_commits", commit_failures}});
  for (size_t i = 0; i < ob.reqs.size(); ++i) {
    auto& p = ob.reqs[i];
    if (p.internal) {  // a schedule firing: try again with the next batch
      current.b.requests.push_back(ob.b.requests[i]);
      current.reqs.push_back(p);
      continue;
    }
    ++counters.ingress["rejected"];
    send_reply(p.client, store_failure_rejection(p.id, err.message));
  }
  // State changes of jobs are not lost: they go again with the next batch.
  auto& nb = current.b;
  nb.updates.insert(nb.updates.begin(), ob.b.updates.begin(), ob.b.updates.end());
  ++batch_gen;  // indexes into current.b.updates moved
  nb.children.insert(nb.children.begin(), ob.b.children.begin(), ob.b.children.end());
  current.finished.insert(current.finished.begin(), ob.finished.begin(), ob.finished.end());
  if (ob.dlq) ob.dlq->answer.set_value({{"error", "the store could not commit: " + err.message}});
}

void broker_core::impl::start_prune(const job_update& done, finished_note note, int64_t now) {
  const int64_t before = now - opts.cfg.store.dedup_retention_days * 86400000LL;
  if (!pruning) {
    pruning = prune_run{};
    log::info(component, "pruning finished jobs and dedup keys", {{"before", log::iso8601_utc_ms(before)}});
  }
  pruning->before_ms = before;
  pruning->jobs.emplace_back(done, std::move(note));
}

void broker_core::impl::prune_committed(const commit_outcome& out) {
  pruning->total += out.pruned;
  if (out.prune_more) return;
  log::info(component, "pruned", {{"rows", pruning->total}});
  for (auto& [update, note] : pruning->jobs) {
    auto result = nlohmann::json::parse(update.result_json.empty() ? "{}" : update.result_json, nullptr, false);
    if (!result.is_object()) result = nlohmann::json::object();
    result["pruned"] = pruning->total;
    update.result_json = note.result_json = result.dump();
    update.outcome.clear();  // the attempt's history entry is already stored
    current.b.updates.push_back(std::move(update));
    current.finished.push_back(std::move(note));
  }
  pruning.reset();
}

// One dead-letter command per batch; its seqs are reserved here so that replayed
// jobs queue behind everything accepted so far, in their old relative order.
void broker_core::impl::take_dlq_command() {
  if (current.dlq) return;
  std::lock_guard<std::mutex> lk(dlq_mu);
  if (dlq_queue.empty()) return;
  current.dlq = dlq_queue.front();
  dlq_queue.pop_front();
  dlq_waiting.store(!dlq_queue.empty());
  auto& c = *current.dlq;
  auto& b = current.b;
  if (c.action == "replay") {
    constexpr int64_t replay_chunk = 10000;
    b.replay_all = c.all;
    b.replay_ids = c.ids;
    b.replay_limit = replay_chunk;
    b.replay_seq_base = seq_ + 1;
    seq_ += c.all ? replay_chunk : static_cast<int64_t>(c.ids.size());
  } else {
    b.purge_all = c.all;
    b.purge_ids = c.ids;
  }
}

void broker_core::impl::dlq_committed(open_batch& ob, const commit_outcome& out, int64_t now) {
  auto& c = *ob.dlq;
  std::set<std::string> done;
  nlohmann::json ids = nlohmann::json::array();
  if (c.action == "replay") {
    for (auto& j : out.replayed) {
      add_live(j, now);
      done.insert(j.id);
      ids.push_back(j.id);
    }
  } else {
    for (auto& id : out.purged) {
      done.insert(id);
      ids.push_back(id);
    }
  }
  nlohmann::json missing = nlohmann::json::array();
  for (auto& id : c.ids)
    if (!done.count(id)) missing.push_back(id);
  log::info(component, c.action == "replay" ? "dead jobs replayed" : "dead jobs purged",
            {{"jobs", ids}, {"missing", missing}});
  c.answer.set_value({{c.action == "replay" ? "replayed" : "purged", ids},
                      {"missing", missing},
                      {"more", out.replay_more}});
  ob.dlq.reset();
}

}  // namespace klynaa::broker
