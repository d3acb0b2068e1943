// The broker loop (core.hpp): polls the ingress, the cluster socket and the
// writer's notifications, and hands what arrives to the broker's parts
// (core_impl.hpp); keeps one batch open while the previous one commits.
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
constexpr size_t max_per_poll = 4096;  // then let the ingress and the writer have a turn
std::atomic<int> instance_counter{0};
}  // namespace

broker_core::impl::impl(zmq::context_t& c, broker_options o, std::unique_ptr<store> s)
    : ctx(c), opts(std::move(o)), st(std::move(s)),
      ingress(c, zmq::socket_type::router), cluster(c, zmq::socket_type::router),
      writer_notify(c, zmq::socket_type::pull) {
  if (!opts.clock) opts.clock = wall_ms;
}

bool broker_core::impl::bind_sockets(std::string& err) {
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
  return true;
}

// The unfinished jobs, the dead-letter count and the schedules missed while down.
bool broker_core::impl::load(std::string& err) {
  store_error serr;
  const int64_t now = now_ms();
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
  log::info(component, "started", {{"ingress", ingress_endpoint}, {"cluster", cluster_endpoints},
                                   {"unfinished_jobs", loaded}, {"ingress_curve", opts.ingress_curve.enabled()},
                                   {"cluster_curve", opts.cluster_curve.enabled()}});
  return true;
}

bool broker_core::impl::open(std::string& err) {
  if (!bind_sockets(err) || !load(err)) return false;
  writer = std::make_unique<commit_writer>(*st, ctx, writer_endpoint);
  writer->start();
  const int64_t now = now_ms();
  check_disk(now);
  publish_stats(now);  // dead_letters from the store, before anyone asks
  return true;
}

// Enters the drain on the first signal; true once a draining broker may stop.
bool broker_core::impl::step_phase(phase p, int64_t now) {
  if (p != phase::running && !draining) {
    draining = true;
    drain_deadline = now + opts.cfg.shutdown.grace_seconds * 1000;
    log::info(component, "draining", {{"grace_seconds", opts.cfg.shutdown.grace_seconds}});
  }
  if (!draining) return false;
  return drain_over(running_jobs(queue.counts()), now, drain_deadline, p == phase::stopping, current.empty(),
                    commit_failures > 0, writer->busy());
}

void broker_core::impl::poll_once(int64_t now) {
  const int64_t timeout = loop_timers::poll_timeout(now, queue.next_due(), schedules.next_due_ms());
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
}

int broker_core::impl::run(const std::atomic<int>& ph) {
  for (;;) {
    if (step_phase(static_cast<phase>(ph.load()), now_ms())) break;
    poll_once(now_ms());
    const int64_t now = now_ms();
    if (timers.take_tick(now, queue.next_due(), schedules.next_due_ms())) tick(now);
    if (!draining) nodes.dispatch(now);
    if (dlq_waiting.load(std::memory_order_relaxed)) take_dlq_command();
    maybe_submit();
  }
  nodes.say_bye();  // so that nodes reconnect to the next broker at once
  writer->stop();
  log::info(component, "stopped", {});
  return 0;
}

void broker_core::impl::on_cluster() {
  const int64_t now = now_ms();
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
      log::warning(component, "cluster message with wrong frame count ignored", {{"frames", rest.size()}});
      continue;
    }
    nodes.on_frame(id.to_string(), rest[0].data(), rest[0].size(), now);
  }
}

bool broker_core::impl::send_frame(const std::string& identity, const std::string& frame) {
  try {
    if (!cluster.send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return false;
    cluster.send(zmq::buffer(frame), zmq::send_flags::none);
    return true;
  } catch (const zmq::error_t&) {
    return false;  // EHOSTUNREACH: the node is gone
  }
}

void broker_core::impl::fire(const firing& f, int64_t now) {
  current.b.requests.push_back(firing_request(f, now, next_seq()));
  pending_request p;
  p.id = f.request_id;
  p.internal = true;
  current.reqs.push_back(std::move(p));
  log::info(component, "schedule fired", {{"schedule", f.name}, {"function", f.function},
                                          {"at", log::iso8601_utc_ms(f.at_ms)}});
}

void broker_core::impl::check_disk(int64_t now) {
  timers.disk_checked(now);
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
  if (timers.take_disk_check(now)) check_disk(now);
  if (!draining)
    for (auto& f : schedules.due(now)) fire(f, now);
  for (auto& id : queue.fire_timers(now, [this] { return next_seq(); })) {
    if (auto* j = queue.find(id)) record(*j, j->state);
  }
  nodes.check_nodes(now);
  expire_waiters(now);
  if (timers.take_stats(now)) publish_stats(now);
}

void broker_core::impl::publish_stats(int64_t now) {
  timers.stats_published(now);
  broker_stats s;
  for (auto& [fn, per] : queue.counts()) {
    auto& f = s.functions[fn];
    for (auto& [state, n] : per) f.states[std::string(to_string(state))] = n;
  }
  // Jobs created by jobs enter the queue when their parent's success commits;
  // until then they count as ready, so the queue never looks empty too early.
  int64_t uncommitted_children = 0;
  auto count_children = [&](const batch& b) {
    for (auto& c : b.children) {
      ++s.functions[c.function].states["ready"];
      ++uncommitted_children;
    }
  };
  count_children(current.b);
  if (committing) count_children(committing->b);
  for (auto& [fn, per] : counters.outcomes) s.functions[fn].outcomes = per;
  for (auto& [id, n] : nodes.nodes())
    s.nodes.push_back({n.name, {n.kinds.begin(), n.kinds.end()}, n.credit, n.running, n.last_seen, n.stats,
                       n.withdrawn});
  if (timers.take_history(now)) counters.add_history(now, static_cast<int64_t>(queue.size()));
  for (auto* j : queue.soonest_retries(20)) s.retrying.push_back({j->id, j->function, j->attempts, j->due_ms});
  s.ts_ms = now;
  s.version = std::string(protocol::build_version());
  s.commit = std::string(protocol::build_commit());
  s.pending = static_cast<int64_t>(queue.size()) + uncommitted_children;
  s.ingress = counters.ingress;
  s.dead_total = counters.dead_total;
  s.dead_letters = dead_letters;
  s.durations = counters.duration_snapshot();
  s.recent_failures = counters.recent_failures;
  s.history = counters.history;
  s.draining = draining;
  s.disk_free_mb = disk_free_mb;
  s.store = counters.store;
  s.cluster_link = nodes.link();
  s.ack_stages = timeline.summary(steady_us());
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

broker_stats broker_core::stats() const {
  std::lock_guard<std::mutex> lk(impl_->snapshot_mu);
  return impl_->snapshot;
}

}  // namespace klynaa::broker
