// klynaa-bench --ceilings (bench_ceilings.hpp).
#include "bench/bench_ceilings.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>
#include <vector>

#include <malloc.h>
#include <sqlite3.h>
#include <zmq.hpp>

#include "bench/bench_common.hpp"
#include "broker/journal_store.hpp"
#include "broker/pg_store.hpp"
#include "broker/store.hpp"

namespace klynaa::bench {

histogram measure_fsync(const std::string& dir, int samples) {
  histogram h;
  if (samples <= 0) return h;
  std::string path = dir + "/klynaa-bench-fsync.probe";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(1, "cannot create " + path + ": " + std::strerror(errno));
  std::vector<char> block(4096, 'k');
  // Preallocate 1 MiB and sync it, so the samples measure overwrites plus the
  // journal-free fdatasync a reused WAL sees, not file growth.
  for (int i = 0; i < 256; ++i)
    if (::pwrite(fd, block.data(), block.size(), off_t{i} * 4096) != 4096) fail(1, "write failed");
  ::fsync(fd);
  for (int i = 0; i < samples; ++i) {
    block[0] = static_cast<char>(i);
    int64_t t0 = mono_ns();
    if (::pwrite(fd, block.data(), block.size(), off_t{i % 256} * 4096) != 4096 ||
        ::fdatasync(fd) != 0)
      fail(1, "write/fdatasync failed on " + path);
    h.record(static_cast<uint64_t>(mono_ns() - t0));
  }
  ::close(fd);
  ::unlink(path.c_str());
  return h;
}

json fsync_json(const histogram& h) {
  return {{"samples", h.count()},
          {"p50", ns_to_ms(h.quantile(0.5))},
          {"p99", ns_to_ms(h.quantile(0.99))},
          {"max", ns_to_ms(h.max())}};
}

namespace {

/// Bytes malloc has handed out and not had back (glibc's mallinfo2), the
/// large blocks it mmaps (hash tables' bucket arrays) included.
size_t heap_bytes() {
  const auto m = mallinfo2();
  return m.uordblks + m.hblkhd;
}

void sql(sqlite3* db, const char* s) {
  char* err = nullptr;
  if (sqlite3_exec(db, s, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "?";
    sqlite3_free(err);
    fail(1, std::string("sqlite: ") + s + ": " + m);
  }
}

json measure_sqlite(const std::string& dir) {
  std::string path = dir + "/klynaa-bench-ceiling.db";
  for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) fail(1, "cannot open " + path);
  sql(db, "PRAGMA journal_mode=WAL");
  sql(db, "PRAGMA synchronous=FULL");
  sql(db, "CREATE TABLE jobs(seq INTEGER PRIMARY KEY, id TEXT NOT NULL, payload BLOB NOT NULL)");
  sqlite3_stmt* ins = nullptr;
  if (sqlite3_prepare_v2(db, "INSERT INTO jobs(id, payload) VALUES(?1, ?2)", -1, &ins, nullptr) !=
      SQLITE_OK)
    fail(1, "sqlite prepare failed");
  std::string payload(120, 'x');  // about one worker.location job
  uint64_t seq = 0;
  auto insert = [&] {
    std::string id = "bench-" + std::to_string(seq++) + "#1";
    sqlite3_bind_text(ins, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(ins, 2, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
    if (sqlite3_step(ins) != SQLITE_DONE) fail(1, "sqlite insert failed");
    sqlite3_reset(ins);
  };
  json out;
  // one row per commit: at most 3000 commits or 3 s
  {
    int64_t t0 = mono_ns(), n = 0;
    while (n < 3000 && mono_ns() - t0 < 3000000000LL) {
      insert();  // autocommit: one transaction, one fsync of the WAL
      ++n;
    }
    double s = static_cast<double>(mono_ns() - t0) / 1e9;
    out["single_commits_per_s"] = std::round(static_cast<double>(n) / s);
  }
  // 256 rows per commit: at most 400 commits or 5 s
  {
    int64_t t0 = mono_ns(), commits = 0;
    while (commits < 400 && mono_ns() - t0 < 5000000000LL) {
      sql(db, "BEGIN");
      for (int i = 0; i < 256; ++i) insert();
      sql(db, "COMMIT");
      ++commits;
    }
    double s = static_cast<double>(mono_ns() - t0) / 1e9;
    out["batch256_commits_per_s"] = std::round(static_cast<double>(commits) / s);
    out["batch256_rows_per_s"] = std::round(static_cast<double>(commits * 256) / s);
  }
  sqlite3_finalize(ins);
  sqlite3_close(db);
  for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
  return out;
}

/// The average commit of the PostgreSQL store between two readings of its
/// commit_stats, split into its phases (pg_store.hpp, pg_commit_stats).
json pg_phases(const klynaa::broker::pg_commit_stats& a, const klynaa::broker::pg_commit_stats& b) {
  const double commits = static_cast<double>(std::max<int64_t>(1, b.commits - a.commits));
  auto avg = [&](int64_t x, int64_t y) { return std::round(static_cast<double>(y - x) / commits / 1e3) / 1e3; };
  return {{"commits", b.commits - a.commits},
          {"statements_per_commit", std::round(static_cast<double>(b.statements - a.statements) / commits * 10) / 10},
          {"encode", avg(a.encode_ns, b.encode_ns)},
          {"execute", avg(a.execute_ns, b.execute_ns)},
          {"commit", avg(a.commit_ns, b.commit_ns)},
          {"total", avg(a.total_ns, b.total_ns)}};
}

/// Klynaa's own store (broker/sqlite_store.cpp or broker/journal_store.cpp,
/// durable): what its one writer thread can do with nothing else running. `n`
/// worker.location requests (one job each, ids from 4 interleaved clients)
/// accepted in batches of 256, then each job's end recorded in batches of 256:
/// the writer's work for one job. For the journal, also the heap each retained
/// dedup key costs once its one job is done (malloc's count, before and after).
json measure_store(const std::string& dir, const std::string& backend, int n,
                   const std::string& pg_url = "") {
  const std::string path = dir + "/klynaa-bench-store.db";
  const std::string jdir = dir + "/klynaa-bench-journal";
  auto clean = [&] {
    for (auto suffix : {"", "-wal", "-shm"}) ::unlink((path + suffix).c_str());
    std::error_code ec;
    std::filesystem::remove_all(jdir, ec);
  };
  clean();
  klynaa::broker::store_error err;
  const size_t heap_before = heap_bytes();
  std::unique_ptr<klynaa::broker::store> st;
  if (backend == "journal") {
    klynaa::broker::journal_options jo;
    jo.dir = jdir;
    st = klynaa::broker::open_journal_store(jo, err);
  } else if (backend == "postgres") {
    klynaa::broker::pg_options po;
    po.url = pg_url;
    po.application_name = "klynaa-bench";
    st = klynaa::broker::open_pg_store(po, err);
  } else {
    klynaa::broker::sqlite_options so;
    so.path = path;
    st = klynaa::broker::open_sqlite_store(so, err);
  }
  if (!st) return {{"error", err.message}};
  const std::string prefix = "kbstore" + std::to_string(wall_ms()) + "-";
  auto id_of = [&](int i) { return prefix + std::to_string(i % 4) + "-" + std::to_string(i); };
  const int64_t now = wall_ms();
  json phases = json::object();  // postgres: where each stage's commit time went
  auto timed = [&](auto fill, const char* stage) -> double {
    const auto before = backend == "postgres"
                            ? static_cast<klynaa::broker::pg_store&>(*st).commit_stats()
                            : klynaa::broker::pg_commit_stats{};
    const int64_t t0 = mono_ns();
    for (int i = 0; i < n; i += 256) {
      klynaa::broker::batch b;
      for (int k = i; k < std::min(n, i + 256); ++k) fill(b, k);
      if (!st->commit(b, err)) return -1;
    }
    if (backend == "postgres") phases[stage] = pg_phases(before, static_cast<klynaa::broker::pg_store&>(*st).commit_stats());
    return static_cast<double>(mono_ns() - t0) / 1e9;
  };
  const double accept_s = timed([&](klynaa::broker::batch& b, int k) {
    klynaa::broker::new_request r;
    r.id = id_of(k);
    r.type = "worker.location";
    r.ts_ms = r.accepted_ms = now;
    klynaa::broker::job_record j;
    j.id = r.id + "#1";
    j.request_id = r.id;
    j.function = "updateWorkerLocation";
    j.data_json = R"({"available":true,"lat":4.0511,"lng":9.7679,"worker_id":)" + std::to_string(k % 100000) + "}";
    j.ordering_key = "worker:" + std::to_string(k % 100000);
    j.seq = k + 1;
    j.due_ms = j.ts_ms = j.created_ms = now;
    r.jobs.push_back(std::move(j));
    b.requests.push_back(std::move(r));
  }, "accept");
  const double done_s = timed([&](klynaa::broker::batch& b, int k) {
    klynaa::broker::job_update u;
    u.id = id_of(k) + "#1";
    u.state = klynaa::broker::job_state::done;
    u.attempts = 1;
    u.seq = k + 1;
    u.result_json = "{}";
    u.node = "bench";
    u.outcome = "ok";
    b.updates.push_back(std::move(u));
  }, "end");
  json out = {{"requests", n}};
  if (backend == "journal" && accept_s >= 0 && done_s >= 0) {
    const auto js = static_cast<klynaa::broker::journal_store&>(*st).stats();
    out["retained_keys"] = js.requests;
    out["bytes_per_retained_key"] = std::round(static_cast<double>(heap_bytes() - heap_before) / n);
    out["checkpoints"] = js.checkpoints;
  }
  if (backend == "postgres") out["commit_phases_ms"] = phases;
  st.reset();
  clean();
  if (accept_s < 0 || done_s < 0) return {{"error", err.message}};
  out["accepts_per_s"] = std::round(n / accept_s);
  out["ends_per_s"] = std::round(n / done_s);
  out["jobs_per_s"] = std::round(n / (accept_s + done_s));
  return out;
}

/// DEALER -> ROUTER (echo) over tcp://127.0.0.1, `window` requests in flight.
json measure_zmq(uint64_t messages, int window) {
  zmq::context_t ctx(1);
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::sndhwm, 0);
  router.set(zmq::sockopt::rcvhwm, 0);
  router.bind("tcp://127.0.0.1:*");
  std::string ep = router.get(zmq::sockopt::last_endpoint);
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    zmq::message_t ident, body;
    zmq::pollitem_t items[] = {{static_cast<void*>(router), 0, ZMQ_POLLIN, 0}};
    while (!stop.load()) {
      if (zmq::poll(items, 1, std::chrono::milliseconds(100)) <= 0) continue;
      while (router.recv(ident, zmq::recv_flags::dontwait)) {
        if (!router.recv(body)) break;
        router.send(ident, zmq::send_flags::sndmore);
        router.send(body, zmq::send_flags::none);
      }
    }
  });
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::sndhwm, 0);
  dealer.set(zmq::sockopt::rcvhwm, 0);
  dealer.connect(ep);
  std::string payload(100, 'z');  // about one publish request
  // warm up the connection
  dealer.send(zmq::buffer(payload), zmq::send_flags::none);
  zmq::message_t m;
  (void)dealer.recv(m);
  uint64_t sent = 0, got = 0;
  int64_t t0 = mono_ns(), limit = t0 + 20000000000LL;
  while (got < messages && mono_ns() < limit) {
    while (sent < messages && sent - got < static_cast<uint64_t>(window)) {
      dealer.send(zmq::buffer(payload), zmq::send_flags::none);
      ++sent;
    }
    zmq::pollitem_t items[] = {{static_cast<void*>(dealer), 0, ZMQ_POLLIN, 0}};
    if (zmq::poll(items, 1, std::chrono::milliseconds(1000)) <= 0) continue;
    while (dealer.recv(m, zmq::recv_flags::dontwait)) ++got;
  }
  double s = static_cast<double>(mono_ns() - t0) / 1e9;
  stop = true;
  echo.join();
  return {{"req_rep_per_s", std::round(static_cast<double>(got) / s)},
          {"messages", got},
          {"window", window},
          {"bytes", payload.size()}};
}

}  // namespace

int run_ceilings(options& o) {
  std::string dir = o.data_dir.empty() ? o.tmp_dir : o.data_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  json out;
  out["mode"] = "ceilings";
  out["dir"] = dir;
  out["machine"] = machine();
  out["fsync_ms"] = fsync_json(measure_fsync(dir, o.fsync_samples ? o.fsync_samples : 500));
  out["sqlite_wal_full"] = measure_sqlite(dir);
  out["klynaa_store"] = measure_store(dir, "sqlite", 50000);
  out["klynaa_journal"] = measure_store(dir, "journal", 50000);
  if (!o.pg_url.empty()) out["klynaa_pg_store"] = measure_store(dir, "postgres", 50000, o.pg_url);
  out["zmq_dealer_router"] = measure_zmq(o.zmq_messages, 1000);
  out["machine"]["loadavg_after"] = loadavg();
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace klynaa::bench
