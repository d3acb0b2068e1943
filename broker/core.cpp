// The broker loop (core.hpp): polls the ingress, the cluster socket and the
// writer's notifications; keeps one batch open while the previous one commits.
#include "broker/core_impl.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <climits>

#include "protocol/jobs.hpp"
#include "protocol/log.hpp"
#include "protocol/schema.hpp"
#include "protocol/version.hpp"

namespace klynaa::broker {

namespace {
constexpr const char* component = "broker";
std::atomic<int> instance_counter{0};
}  // namespace

broker_core::impl::impl(zmq::context_t& c, broker_options o, std::unique_ptr<store> s)
    : ctx(c), opts(std::move(o)), st(std::move(s)),
      ingress(c, zmq::socket_type::router), cluster(c, zmq::socket_type::router),
      writer_notify(c, zmq::socket_type::pull) {}

bool broker_core::impl::open(std::string& err) {
  const auto& cfg = opts.cfg;
  // The ZAP handler is bound before any CURVE socket (zap.hpp).
  std::vector<zap_handler::domain> zap_domains;
  if (opts.ingress_curve.enabled())
    zap_domains.push_back({"ingress", opts.ingress_curve.allow_file, opts.ingress_curve.allow_key});
  if (opts.cluster_curve.enabled())
    zap_domains.push_back({"cluster", opts.cluster_curve.allow_file, opts.cluster_curve.allow_key});
  if (!zap.start(ctx, zap_domains, err)) return false;
  try {
    if (opts.ingress_curve.enabled()) make_curve_server(ingress, opts.ingress_curve, "ingress");
    ingress.set(zmq::sockopt::linger, 0);
    ingress.set(zmq::sockopt::router_mandatory, 1);
    ingress.set(zmq::sockopt::maxmsgsize, cfg.ingress.max_bytes * 16);
    ingress.set(zmq::sockopt::rcvhwm, 100000);
    ingress.set(zmq::sockopt::sndhwm, 100000);
    ingress.bind(opts.ingress_bind);
    ingress_endpoint = ingress.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    err = "cannot bind the ingress to " + opts.ingress_bind + " (ingress.bind / --ingress): " + e.what();
    return false;
  }
  try {
    if (opts.cluster_curve.enabled()) make_curve_server(cluster, opts.cluster_curve, "cluster");
    cluster.set(zmq::sockopt::linger, 0);
    cluster.set(zmq::sockopt::router_mandatory, 1);
    cluster.set(zmq::sockopt::sndhwm, 100000);
    cluster.set(zmq::sockopt::rcvhwm, 100000);
    for (auto& e : opts.cluster_binds) {
      cluster.bind(e);
      cluster_endpoints.push_back(cluster.get(zmq::sockopt::last_endpoint));
    }
  } catch (const zmq::error_t& e) {
    err = "cannot bind the cluster endpoint (cluster.bind / --cluster): " + std::string(e.what());
    return false;
  }
  writer_endpoint = "inproc://klynaa-writer-" + std::to_string(++instance_counter);
  writer_notify.set(zmq::sockopt::linger, 0);
  writer_notify.bind(writer_endpoint);

  store_error serr;
  const int64_t now = wall_ms();
  size_t loaded = 0;
  bool ok = st->load_unfinished([&](job_record&& r) {
    add_live(std::move(r), now);
    ++loaded;
  }, serr);
  if (!ok) {
    err = "cannot read the store: " + serr.message;
    return false;
  }
  seq_ = st->max_seq();
  dead_letters = 0;  // then count_dead_letters() keeps it equal to the store's
  for (auto& [fn, state, n] : st->count_by_function())
    if (state == job_state::dead) dead_letters += n;
  if (!schedules.init(opts.cfg, err)) return false;
  std::vector<std::string> skipped;
  for (auto& f : schedules.catch_up(now, opts.cfg.scheduler.misfire_grace_seconds * 1000, skipped))
    fire(f, now);
  for (auto& s : skipped)
    log::warning(component, "missed schedule skipped: older than scheduler.misfire_grace_seconds",
                 {{"schedule", s}});
  writer = std::make_unique<commit_writer>(*st, ctx, writer_endpoint);
  writer->start();
  check_disk(now);
  publish_stats(now);  // dead_letters from the store, before anyone asks
  log::info(component, "started", {{"ingress", ingress_endpoint}, {"cluster", cluster_endpoints},
                                   {"unfinished_jobs", loaded}, {"ingress_curve", opts.ingress_curve.enabled()},
                                   {"cluster_curve", opts.cluster_curve.enabled()}});
  return true;
}

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

int broker_core::impl::run(const std::atomic<int>& ph) {
  int64_t last_tick = 0;
  for (;;) {
    int64_t now = wall_ms();
    auto p = static_cast<phase>(ph.load());
    if (p != phase::running && !draining) {
      draining = true;
      drain_deadline = now + opts.cfg.shutdown.grace_seconds * 1000;
      log::info(component, "draining", {{"grace_seconds", opts.cfg.shutdown.grace_seconds}});
    }
    if (draining) {
      int64_t running = queue.counts().empty() ? 0 : 0;
      for (auto& [fn, per] : queue.counts()) {
        auto it = per.find(job_state::running);
        if (it != per.end()) running += it->second;
      }
      bool done_waiting = running == 0 || now >= drain_deadline || p == phase::stopping;
      // A store that cannot commit (disk full) must not keep a stopping broker
      // alive: the unstored state changes are only lost progress (those jobs run
      // again after the restart), never an acknowledged request.
      const bool flushed = current.empty() || (p == phase::stopping && commit_failures > 0);
      if (done_waiting && flushed && !writer->busy()) break;
    }

    int64_t timeout = 100;
    int64_t due = std::min(queue.next_due(), schedules.next_due_ms());
    if (due != INT64_MAX) timeout = std::max<int64_t>(0, std::min<int64_t>(timeout, due - now));
    zmq::pollitem_t items[] = {
        {static_cast<void*>(ingress), 0, ZMQ_POLLIN, 0},
        {static_cast<void*>(cluster), 0, ZMQ_POLLIN, 0},
        {static_cast<void*>(writer_notify), 0, ZMQ_POLLIN, 0},
    };
    try {
      zmq::poll(items, 3, std::chrono::milliseconds(timeout));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
    }
    if (items[2].revents & ZMQ_POLLIN) on_commit();
    if (items[0].revents & ZMQ_POLLIN) on_ingress();
    if (items[1].revents & ZMQ_POLLIN) on_cluster();
    now = wall_ms();
    if (now - last_tick >= 50 || queue.next_due() <= now || schedules.next_due_ms() <= now) {
      tick(now);
      last_tick = now;
    }
    if (!draining) dispatch(now);
    if (dlq_waiting.load(std::memory_order_relaxed)) take_dlq_command();
    maybe_submit();
  }
  // Say goodbye so nodes reconnect to the next broker at once.
  protocol::cluster::message bye = protocol::cluster::bye{};
  auto frame = protocol::cluster::encode(bye);
  for (auto& [id, n] : nodes) send_node(id, frame);
  writer->stop();
  log::info(component, "stopped", {});
  return 0;
}

// A schedule firing is a request with a deterministic id: the store's dedup makes
// it fire once per scheduled time, whatever restarts or other brokers do.
void broker_core::impl::fire(const firing& f, int64_t now) {
  new_request nr;
  nr.id = f.request_id;
  nr.op = static_cast<int>(protocol::op::publish);
  nr.type = f.function;
  nr.ts_ms = f.at_ms;
  nr.accepted_ms = now;
  job_record r;
  r.id = protocol::child_job_id(f.request_id, 1);
  r.request_id = f.request_id;
  r.function = f.function;
  r.data_json = f.data_json;
  auto data = nlohmann::json::parse(f.data_json, nullptr, false);
  r.ordering_key = data.is_object() ? protocol::ordering_key_of(data) : std::string();
  r.seq = next_seq();
  r.ts_ms = f.at_ms;
  r.created_ms = now;
  nr.jobs.push_back(std::move(r));
  current.b.requests.push_back(std::move(nr));
  pending_request p;
  p.id = f.request_id;
  p.internal = true;
  current.reqs.push_back(std::move(p));
  log::info(component, "schedule fired", {{"schedule", f.name}, {"function", f.function},
                                          {"at", log::iso8601_utc_ms(f.at_ms)}});
}

void broker_core::impl::check_disk(int64_t now) {
  last_disk_check = now;
  struct statvfs fs {};
  if (::statvfs(opts.data_dir.c_str(), &fs) != 0) return;
  const int64_t free_mb = static_cast<int64_t>(fs.f_bavail) * static_cast<int64_t>(fs.f_frsize) / (1024 * 1024);
  const bool was_low = disk_free_mb >= 0 && disk_free_mb < opts.cfg.ingress.min_free_disk_mb;
  const bool low = free_mb < opts.cfg.ingress.min_free_disk_mb;
  if (low && !was_low)
    log::error(component, "disk nearly full: new requests are rejected as overloaded until space returns",
               {{"data_dir", opts.data_dir}, {"free_mb", free_mb},
                {"min_free_disk_mb", opts.cfg.ingress.min_free_disk_mb}});
  else if (!low && was_low)
    log::info(component, "disk space is back: accepting requests again", {{"free_mb", free_mb}});
  disk_free_mb = free_mb;
}

void broker_core::impl::tick(int64_t now) {
  if (now - last_disk_check >= 1000) check_disk(now);
  if (!draining)
    for (auto& f : schedules.due(now)) fire(f, now);
  for (auto& id : queue.fire_timers(now, [this] { return next_seq(); })) {
    if (auto* j = queue.find(id)) record(*j, j->state);
  }
  check_nodes(now);
  expire_waiters(now);
  if (now - last_stats >= 250) publish_stats(now);
}

void broker_core::impl::start_prune(const job_update& done, finished_note note, int64_t now) {
  const int64_t before = now - opts.cfg.store.dedup_retention_days * 86400000LL;
  if (!pruning) {
    pruning = prune_run{};
    log::info(component, "pruning finished jobs and dedup keys",
              {{"before", log::iso8601_utc_ms(before)}});
  }
  pruning->before_ms = before;
  pruning->jobs.emplace_back(done, std::move(note));
}

void broker_core::impl::prune_committed(const commit_outcome& out) {
  pruning->total += out.pruned;
  if (out.prune_more) return;
  log::info(component, "pruned", {{"rows", pruning->total}});
  for (auto& [update, note] : pruning->jobs) {
    auto result = nlohmann::json::parse(update.result_json.empty() ? "{}" : update.result_json,
                                        nullptr, false);
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

void broker_core::impl::note_failure(const live_job& j, const std::string& outcome, const std::string& code,
                                     const std::string& message, int64_t now) {
  recent_failures.push_back({{"ts_ms", now}, {"job_id", j.id}, {"function", j.function},
                             {"attempt", j.attempts}, {"node", j.node_name()}, {"outcome", outcome},
                             {"code", code}, {"message", message}});
  if (recent_failures.size() > 50) recent_failures.erase(recent_failures.begin());
}

void broker_core::impl::maybe_submit() {
  if (writer->busy() || committing) return;
  if (commit_failures > 0) {  // the store failed: back off, and probe it if nothing else is due
    if (wall_ms() < next_commit_ms) return;
    if (current.empty()) current.b.probe = true;
  }
  if (pruning && !draining && !current.b.prune_before_ms) current.b.prune_before_ms = pruning->before_ms;
  if (current.empty()) return;
  committing = std::move(current);
  current = open_batch{};
  writer->submit(committing->b);  // by reference: it stays for the replies and a retry
  ++batch_gen;  // record() no longer merges into the batch that left
}

void broker_core::impl::on_commit() {
  zmq::message_t m;
  while (writer_notify.recv(m, zmq::recv_flags::dontwait)) {
  }
  auto r = writer->take();
  if (!r || !committing) return;
  open_batch ob = std::move(*committing);
  committing.reset();
  ++store_totals.commits;
  store_totals.requests += static_cast<int64_t>(ob.b.requests.size());
  store_totals.updates += static_cast<int64_t>(ob.b.updates.size());
  store_totals.commit_us += r->commit_us;
  if (r->outcome)
    apply_commit(ob, *r->outcome);
  else
    fail_commit(ob, r->error);
}

void broker_core::impl::apply_commit(open_batch& ob, const commit_outcome& out) {
  const int64_t now = wall_ms();
  if (commit_failures > 0)
    log::info(component, "the store commits again", {{"failed_commits", commit_failures}});
  commit_failures = 0;
  for (size_t i = 0; i < ob.reqs.size() && i < out.requests.size(); ++i) {
    auto& p = ob.reqs[i];
    auto& o = out.requests[i];
    auto& jobs = ob.b.requests[i].jobs;
    for (auto& id : o.cancelled) queue.finish(id, job_state::cancelled);
    if (p.internal) {
      for (auto k : o.created) add_live(std::move(jobs[k]), now);
      continue;
    }
    if (o.duplicate) {
      answer_duplicate(p, o);
      continue;
    }
    for (auto k : o.created) add_live(std::move(jobs[k]), now);
    ++ingress_counts["accepted"];
    if (p.op == protocol::op::invoke && !o.job_ids.empty()) {
      add_waiter(p, o.job_ids.front());
      continue;
    }
    protocol::reply rep;
    rep.id = p.id;
    rep.status = protocol::reply_status::accepted;
    rep.jobs = o.job_ids;
    send_reply(p.client, rep);
  }
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
  snapshot["dead_letters"] = dead_letters;
}

void broker_core::impl::fail_commit(open_batch& ob, const store_error& err) {
  // Back off (100 ms doubling to 2 s) so that a full disk is not retried in a
  // tight loop; log the first failure and then every 20th.
  ++commit_failures;
  last_commit_error = err.message;
  next_commit_ms = wall_ms() + std::min<int64_t>(2000, int64_t{100} << std::min<int64_t>(commit_failures - 1, 5));
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
    auto rep = protocol::rejection(p.id, protocol::error_code::overloaded,
                                   "the broker cannot write to its store (" + err.message +
                                       "); nothing was stored, retry later");
    rep.retry_after_ms = 1000;
    ++ingress_counts["rejected"];
    send_reply(p.client, rep);
  }
  // State changes of jobs are not lost: they go again with the next batch.
  auto& nb = current.b;
  nb.updates.insert(nb.updates.begin(), ob.b.updates.begin(), ob.b.updates.end());
  ++batch_gen;  // indexes into current.b.updates moved
  nb.children.insert(nb.children.begin(), ob.b.children.begin(), ob.b.children.end());
  current.finished.insert(current.finished.begin(), ob.finished.begin(), ob.finished.end());
  if (ob.dlq) ob.dlq->answer.set_value({{"error", "the store could not commit: " + err.message}});
}

void broker_core::impl::notify_waiters(const finished_note& n) {
  auto range = waiters.equal_range(n.job_id);
  for (auto it = range.first; it != range.second; ++it) {
    protocol::reply rep;
    rep.id = it->second.request_id;
    rep.status = n.status;
    if (n.status == protocol::reply_status::ok)
      rep.result = nlohmann::json::parse(n.result_json.empty() ? "{}" : n.result_json, nullptr, false);
    rep.error = n.error;
    send_reply(it->second.client, rep);
  }
  waiters.erase(n.job_id);
}

void broker_core::impl::expire_waiters(int64_t now) {
  for (auto it = waiters.begin(); it != waiters.end();) {
    if (it->second.deadline <= now) {
      protocol::reply rep;
      rep.id = it->second.request_id;
      rep.status = protocol::reply_status::timeout;
      rep.jobs = {it->first};
      send_reply(it->second.client, rep);
      it = waiters.erase(it);
    } else {
      ++it;
    }
  }
}

nlohmann::json broker_core::impl::durations_json() const {
  nlohmann::json out = nlohmann::json::object();
  for (auto& [fn, h] : durations) {
    auto& j = out[fn];
    j["bounds"] = nlohmann::json::array();
    j["buckets"] = nlohmann::json::array();
    for (size_t i = 0; i < sizeof(h.counts) / sizeof(h.counts[0]); ++i) {
      j["bounds"].push_back(duration_histogram::bounds[i]);
      j["buckets"].push_back(h.counts[i]);
    }
    j["sum"] = h.sum;
    j["count"] = h.count;
  }
  return out;
}

void broker_core::impl::publish_stats(int64_t now) {
  last_stats = now;
  nlohmann::json functions = nlohmann::json::object();
  for (auto& [fn, per] : queue.counts()) {
    auto& f = functions[fn];
    for (auto& [s, n] : per) f[to_string(s)] = n;
  }
  // Jobs created by jobs enter the queue when their parent's success commits;
  // until then they count as ready, so the queue never looks empty too early.
  int64_t uncommitted_children = 0;
  auto count_children = [&](const batch& b) {
    for (auto& c : b.children) {
      auto& f = functions[c.function];  // null when no job of it is live: value() would throw
      f["ready"] = (f.is_object() && f.contains("ready") ? f["ready"].get<int64_t>() : 0) + 1;
      ++uncommitted_children;
    }
  };
  count_children(current.b);
  if (committing) count_children(committing->b);
  for (auto& [fn, per] : outcomes)
    for (auto& [o, n] : per) functions[fn]["outcomes"][o] = n;
  nlohmann::json ns = nlohmann::json::array();
  for (auto& [id, n] : nodes)
    ns.push_back({{"name", n.name}, {"kinds", n.kinds}, {"credit", n.credit}, {"running", n.running},
                  {"last_heartbeat_ms", n.last_seen}, {"stats", n.stats},
                  {"withdrawn", n.withdrawn}});
  // Totals every 5 s over the last 10 minutes, for the dashboard's charts.
  if (now - last_history >= 5000) {
    last_history = now;
    int64_t ok = 0, retry = 0, dead = 0;
    for (auto& [fn, per] : outcomes) {
      auto get = [&](const char* o) { auto it = per.find(o); return it == per.end() ? int64_t{0} : it->second; };
      ok += get("ok");
      retry += get("retry");
      dead += get("dead");
    }
    auto acc = ingress_counts.find("accepted");
    history.push_back({{"ts_ms", now}, {"ok", ok}, {"retry", retry}, {"dead", dead},
                       {"accepted", acc == ingress_counts.end() ? 0 : acc->second},
                       {"pending", static_cast<int64_t>(queue.size())}});
    if (history.size() > 120) history.erase(history.begin());
  }
  nlohmann::json retrying = nlohmann::json::array();  // the next retries, soonest first
  for (auto* j : queue.soonest_retries(20))
    retrying.push_back({{"job_id", j->id}, {"function", j->function}, {"attempts", j->attempts},
                        {"next_run_ms", j->due_ms}});
  nlohmann::json s = {{"ts_ms", now},
                      {"version", protocol::build_version()},
                      {"commit", protocol::build_commit()},
                      {"pending", static_cast<int64_t>(queue.size()) + uncommitted_children},
                      {"functions", functions},
                      {"nodes", ns},
                      {"ingress", ingress_counts},
                      {"dead_total", dead_total},
                      {"dead_letters", dead_letters},
                      {"durations", durations_json()},
                      {"recent_failures", recent_failures},
                      {"retrying", retrying},
                      {"history", history},
                      {"draining", draining},
                      {"disk_free_mb", disk_free_mb},
                      {"store", {{"commits", store_totals.commits},
                                 {"requests", store_totals.requests},
                                 {"updates", store_totals.updates},
                                 {"commit_seconds", static_cast<double>(store_totals.commit_us) / 1e6}}},
                      {"cluster_link", {{"frames_sent", link_totals.frames_sent},
                                        {"messages_sent", link_totals.messages_sent},
                                        {"frames_received", link_totals.frames_received},
                                        {"messages_received", link_totals.messages_received}}}};
  std::lock_guard<std::mutex> lk(snapshot_mu);
  snapshot = std::move(s);
}

broker_core::broker_core(zmq::context_t& ctx, broker_options opts, std::unique_ptr<store> st)
    : impl_(std::make_unique<impl>(ctx, std::move(opts), std::move(st))) {}

broker_core::~broker_core() = default;

bool broker_core::open(std::string& err) { return impl_->open(err); }

int broker_core::run(const std::atomic<int>& ph) { return impl_->run(ph); }

nlohmann::json broker_core::bound_endpoints() const {
  return {{"ingress", impl_->ingress_endpoint}, {"cluster", impl_->cluster_endpoints}};
}

nlohmann::json broker_core::dlq_command(const std::string& action, const std::vector<std::string>& ids,
                                        bool all, std::chrono::milliseconds timeout) {
  auto req = std::make_shared<dlq_request>();
  req->action = action;
  for (auto& id : ids)  // each once: `dlq replay X X` replays X once
    if (std::find(req->ids.begin(), req->ids.end(), id) == req->ids.end()) req->ids.push_back(id);
  req->all = all;
  auto answer = req->answer.get_future();
  {
    std::lock_guard<std::mutex> lk(impl_->dlq_mu);
    impl_->dlq_queue.push_back(req);
    impl_->dlq_waiting.store(true);
  }
  if (answer.wait_for(timeout) != std::future_status::ready)
    return {{"error", "the broker did not answer within " + std::to_string(timeout.count()) +
                          " ms; the command may still happen (check klynaa dlq list)"}};
  return answer.get();
}

nlohmann::json broker_core::stats() const {
  std::lock_guard<std::mutex> lk(impl_->snapshot_mu);
  return impl_->snapshot;
}

}  // namespace klynaa::broker
