// klynaa-bench's load mode (bench_load.hpp): checks, the broker found or
// started, the connections run, the jobs waited for, and the figures.
#include "bench/bench_load.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <msgpack.hpp>
#include <zmq.hpp>

#include "bench/bench_admin.hpp"
#include "bench/bench_ceilings.hpp"
#include "bench/bench_common.hpp"
#include "bench/bench_connection.hpp"
#include "bench/bench_frames.hpp"
#include "bench/bench_spawn.hpp"
#include "protocol/message.hpp"

namespace klynaa::bench {

namespace {

/// Checks the options of a load run; returns the function whose jobs it waits for.
std::string check_load_options(options& o) {
  set_keep_on_exit(o.keep);
  if (!o.start && o.ingress.empty() && o.data_dir.empty())
    fail(2, "say where the broker is: --start, --ingress E or --data-dir D");
  if (o.broker_only && !o.start)
    fail(2, "--broker-only goes with --start (it chooses what --start spawns)");
  if (o.broker_only)
    o.wait = false;  // nothing runs the jobs (and no invoke is sent: it would wait for nothing)
  if ((o.wait_function.empty() ? default_function(o.type) : o.wait_function).empty())
    fail(2, "unknown --type " + o.type + "; give --wait-function too, or --no-wait");
  return o.wait_function.empty() ? default_function(o.type) : o.wait_function;
}

/// The id prefix that makes ids unique per run (the broker keeps ids for 7 days).
std::string run_prefix() {
  char b[64];
  std::snprintf(b, sizeof b, "kb%llx%04x", static_cast<unsigned long long>(wall_ms()),
                static_cast<unsigned>(::getpid() & 0xffff));
  return b;
}

/// Self-check: our hand-rolled frames pass the broker's own decoder.
void check_frames(const options& o, const std::string& prefix, const std::string& function) {
  for (bool inv : {false, true}) {
    if (inv && !(o.wait && o.e2e_every > 0)) continue;
    msgpack::sbuffer buf;
    build_request(buf, inv, prefix + "-check", o.type, function, 12345, o.keys, 1000);
    auto d = klynaa::protocol::decode_request(buf.data(), buf.size(), wall_ms(), {});
    if (!d.req)
      fail(2, std::string("cannot build a valid ") + (inv ? "invoke of " + function : o.type) +
                  " request: " + (d.error ? d.error->code + ": " + d.error->message : "?"));
  }
}

/// Starts the broker (--start), or fills from D/broker.json what was not given
/// (--data-dir); then the ingress, and the admin endpoint when waiting, are known.
void find_broker(options& o) {
  if (o.start) start_klynaa(o);
  if (!o.start && !o.data_dir.empty()) {
    auto j = json::parse(read_text(o.data_dir + "/broker.json"), nullptr, false);
    if (!j.is_object() && o.ingress.empty())
      fail(1, "no readable " + o.data_dir + "/broker.json (--data-dir)");
    if (!j.is_object()) j = json::object();
    if (o.ingress.empty()) o.ingress = j.value("ingress", "");
    if (o.admin.empty()) o.admin = j.value("admin", "");
    if (o.pid == 0) o.pid = j.value("pid", 0);
  }
  if (o.ingress.empty()) fail(2, "no ingress endpoint in broker.json (--data-dir)");
  if (o.wait && o.admin.empty()) fail(2, "waiting for the jobs needs --admin HOST:PORT (or --no-wait)");
}

/// Ends a run: the message on stderr (with the spawned broker's log on failure),
/// the spawned broker stopped; returns `code`.
int finish(const options& o, int code, const std::string& msg) {
  if (!msg.empty()) std::cerr << "klynaa-bench: " << msg << "\n";
  if (code != 0 && spawned_child().pid > 0)
    std::cerr << "klynaa log tail:\n" << tail_of(spawned_child().log, 2000) << "\n";
  cleanup_child(o);
  return code;
}

/// The broker's RSS sampled every 50 ms on a thread of its own, until stop().
class rss_sampler {
 public:
  explicit rss_sampler(int pid)
      : thread_([this, pid] {
          while (sampling_.load()) {
            if (auto r = rss_mb(pid)) peak_ = std::max(peak_, r->first);
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }) {}
  ~rss_sampler() { stop(); }
  void stop() {
    sampling_ = false;
    if (thread_.joinable()) thread_.join();
  }
  /// The highest RSS seen, in MiB (read after stop()).
  double peak() const { return peak_; }

 private:
  std::atomic<bool> sampling_{true};
  double peak_ = 0;
  std::thread thread_;  // last: starts once the fields it uses exist
};

/// /stats figures of the waited function, the group commits and the cluster link.
struct stats_view {
  fn_counts counts;
  json store = json::object();  // /stats "store": group commits
  json link = json::object();   // /stats "cluster_link": frames
};

stats_view view_of(const json& st, const std::string& function) {
  stats_view v;
  v.counts = counts_of(st, function);
  v.store = st.value("store", json::object());
  v.link = st.value("cluster_link", json::object());
  return v;
}

/// What the connections measured, together.
struct totals {
  histogram ack, e2e;
  uint64_t publishes = 0, invokes = 0, overloaded = 0;
  int64_t last_ack = 0;
  std::string error;  // the first connection's error
};

totals sum_results(const std::vector<conn_result>& results, int64_t t0) {
  totals t;
  t.last_ack = t0;
  for (auto& r : results) {
    t.ack += r.ack;
    t.e2e += r.e2e;
    t.publishes += r.publishes_acked;
    t.invokes += r.invokes_ok;
    t.overloaded += r.overloaded_retries;
    t.last_ack = std::max(t.last_ack, r.last_publish_ack);
    if (t.error.empty() && !r.error.empty()) t.error = r.error;
  }
  return t;
}

/// Starts every connection's thread, waits until all are ready, starts the
/// clock (S.t0, S.deadline) and returns the threads.
std::vector<std::thread> start_connections(shared_state& S, std::vector<conn_result>& results) {
  const options& o = *S.o;
  std::vector<std::thread> threads;
  for (int c = 0; c < o.connections; ++c)
    threads.emplace_back([&S, &results, c] { connection(S, c, results[static_cast<size_t>(c)]); });
  std::unique_lock<std::mutex> lk(S.mu);
  S.cv.wait(lk, [&] { return S.ready == o.connections; });
  S.t0 = mono_ns() + 5000000;  // 5 ms: every thread is waiting on the cv by then
  S.deadline = S.t0 + static_cast<int64_t>(o.timeout_s * 1e9);
  S.go = true;
  S.cv.notify_all();
  return threads;
}

/// Polls /stats until `expect` more jobs of `function` than in `base` are ok and
/// none is ready, running or waiting to retry; sets `last` and `t_done`. Returns
/// why it failed (a dead job, the deadline), or "" on success.
std::string wait_for_jobs(admin_client& admin, const std::string& function, const stats_view& base,
                          uint64_t expect, int64_t deadline, stats_view& last, int64_t& t_done) {
  while (true) {
    auto st = admin.stats();
    int64_t now = mono_ns();
    if (st) {
      last = view_of(*st, function);
      const fn_counts& l = last.counts;
      if (l.dead > base.counts.dead)
        return std::to_string(l.dead - base.counts.dead) + " " + function +
               " jobs went dead — no figures from an incomplete run";
      if (l.ok - base.counts.ok >= static_cast<int64_t>(expect) && l.ready == 0 && l.running == 0 &&
          l.retry_wait == 0) {
        t_done = now;
        return "";
      }
    }
    if (now > deadline) {
      const fn_counts& l = last.counts;
      json j = {{"ok", l.ok - base.counts.ok}, {"expected", expect}, {"ready", l.ready},
                {"running", l.running}, {"retry_wait", l.retry_wait},
                {"retry", l.retry - base.counts.retry}};
      return function + " jobs did not complete within --timeout: " + j.dump() +
             " — no figures from an incomplete run";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

/// {p50, p99, [p999,] max, samples} of a latency histogram in ms, or nulls when empty.
json latency_json(const histogram& h, bool with_p999) {
  if (!h.count()) {
    json empty = {{"p50", nullptr}, {"p99", nullptr}, {"samples", 0}};
    if (with_p999) empty["p999"] = nullptr;
    return empty;
  }
  json j = {{"p50", ns_to_ms(h.quantile(0.5))},
            {"p99", ns_to_ms(h.quantile(0.99))},
            {"max", ns_to_ms(h.max())},
            {"samples", h.count()}};
  if (with_p999) j["p999"] = ns_to_ms(h.quantile(0.999));
  return j;
}

/// The broker's group commits and its cluster link during the run (deltas of
/// /stats), when the run waited for its jobs.
void add_broker_figures(json& out, const stats_view& base, const stats_view& last) {
  auto delta = [&](const char* k) { return last.store.value(k, 0.0) - base.store.value(k, 0.0); };
  if (delta("commits") > 0) {
    const double commits = delta("commits");
    out["store_commits"] = {{"commits", commits},
                            {"requests_per_commit", round3(delta("requests") / commits)},
                            {"updates_per_commit", round3(delta("updates") / commits)},
                            {"commit_ms_avg", round3(delta("commit_seconds") * 1000 / commits)}};
  }
  // messages per frame each way (BATCH frames)
  auto link = [&](const char* k) { return last.link.value(k, 0.0) - base.link.value(k, 0.0); };
  if (link("frames_sent") > 0 && link("frames_received") > 0)
    out["cluster_link"] = {{"messages_per_frame_sent", round3(link("messages_sent") / link("frames_sent"))},
                           {"messages_per_frame_received",
                            round3(link("messages_received") / link("frames_received"))}};
}

/// What the run is: its options, as the JSON line repeats them.
json run_description(const options& o, const std::string& function) {
  json out;
  out["system"] = "klynaa";
  out["store"] = o.store.empty() ? json(nullptr) : json(o.store);  // --store (null: the broker's config)
  out["type"] = o.type;
  out["wait_function"] = o.wait ? json(function) : json(nullptr);
  out["count"] = o.count;
  out["connections"] = o.connections;
  out["window"] = o.window;
  out["rate"] = o.rate;
  out["keys"] = o.keys;
  out["e2e_every"] = o.wait ? o.e2e_every : 0;
  return out;
}

/// Everything a finished run measured, for the JSON line.
struct run_figures {
  const totals* sum = nullptr;
  stats_view base, last;
  uint64_t expect = 0;
  int64_t t0 = 0, t_sent = 0, t_done = 0;
  json fsync;
  double rss_peak_seen = 0;
};

json figures_json(const options& o, const std::string& function, const run_figures& f) {
  const totals& t = *f.sum;
  auto rss = rss_mb(o.pid);
  json out = run_description(o, function);
  double send_s = static_cast<double>(t.last_ack - f.t0) / 1e9;
  out["ingress_acks_per_s"] = t.publishes && send_s > 0 ? json(std::round(t.publishes / send_s)) : json(nullptr);
  out["ack_latency_ms"] = latency_json(t.ack, true);  // empty: --e2e-every 1, every request an invoke
  if (o.wait) {
    double e2e_s = static_cast<double>(f.t_done - f.t0) / 1e9;
    out["e2e_jobs_per_s"] = std::round(static_cast<double>(f.expect) / e2e_s);
    out["e2e_seconds"] = round3(e2e_s);
    out["jobs_done"] = f.last.counts.ok - f.base.counts.ok;
  } else {
    out["e2e_jobs_per_s"] = nullptr;
  }
  out["e2e_latency_ms"] = latency_json(t.e2e, false);
  out["rss_mb"] = rss ? json(round3(rss->first)) : json(nullptr);
  out["rss_peak_mb"] = rss ? json(round3(std::max(rss->second, f.rss_peak_seen))) : json(nullptr);
  out["fsync_ms"] = f.fsync;
  out["fsync_p99_ms"] = f.fsync.is_object() ? f.fsync["p99"] : json(nullptr);
  out["overloaded_retries"] = t.overloaded;
  if (o.wait) add_broker_figures(out, f.base, f.last);
  out["send_seconds"] = round3(static_cast<double>(f.t_sent - f.t0) / 1e9);
  out["loadavg"] = loadavg();
  out["cores"] = std::thread::hardware_concurrency();
  return out;
}

}  // namespace

int run_load(options& o) {
  const std::string function = check_load_options(o);
  const std::string prefix = run_prefix();
  check_frames(o, prefix, function);
  find_broker(o);

  run_figures f;
  // fsync probe of the data dir's filesystem, before the load.
  f.fsync = nullptr;
  if (!o.data_dir.empty() && o.fsync_samples > 0)
    f.fsync = fsync_json(measure_fsync(o.data_dir, std::min(o.fsync_samples, 200)));

  std::optional<admin_client> admin;
  if (o.wait) {
    admin.emplace(o.admin);
    auto st = admin->stats();
    if (!st) return finish(o, 1, "cannot GET http://" + o.admin + "/stats (--admin)");
    f.base = view_of(*st, function);
  }
  f.expect = o.expect ? o.expect : o.count;

  zmq::context_t ctx(std::min(o.connections, 2));
  shared_state S;
  S.o = &o;
  S.prefix = prefix;
  S.function = function;
  S.ctx = &ctx;
  std::vector<conn_result> results(static_cast<size_t>(o.connections));
  auto threads = start_connections(S, results);
  rss_sampler sampler(o.pid);  // the broker's RSS while the load runs
  for (auto& t : threads) t.join();
  f.t0 = S.t0;
  f.t_sent = mono_ns();

  const totals sum = sum_results(results, S.t0);
  f.sum = &sum;
  if (!sum.error.empty()) {
    sampler.stop();
    return finish(o, 1, sum.error + " — no figures from an incomplete run");
  }
  if (o.wait) {
    std::string failed = wait_for_jobs(*admin, function, f.base, f.expect, S.deadline, f.last, f.t_done);
    if (!failed.empty()) {
      sampler.stop();
      return finish(o, 1, failed);
    }
  }
  sampler.stop();
  f.rss_peak_seen = sampler.peak();
  json out = figures_json(o, function, f);
  // The broker's own split of an ack (broker/ack_timeline.hpp), since its start.
  if (!o.admin.empty())
    if (auto st = admin_client(o.admin).stats()) out["broker_ack_timeline_us"] = st->value("ack_timeline", json());
  std::cout << out.dump() << std::endl;
  return finish(o, 0, "");
}

}  // namespace klynaa::bench
