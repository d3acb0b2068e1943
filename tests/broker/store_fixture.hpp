// What the store's tests share (store_test.cpp, store_jobs_test.cpp,
// store_durability_test.cpp): a store of any backend in a fresh place
// (store_at, KLYNAA_EACH_BACKEND), requests and jobs to commit, and raw SQL on
// the database beside the store (or, for the journal, its equivalent on the
// files).
#pragma once

#include "broker/journal_store.hpp"
#include "broker/pg_store.hpp"
#include "broker/store.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "journal_fault_fs.hpp"
#include "pg_server.hpp"
#include "tests/support/temp_dir.hpp"

namespace store_fixture {

using namespace klynaa::broker;
using klynaa::test::temp_dir;

inline std::unique_ptr<store> open_store(const std::string& path, bool read_only = false) {
  sqlite_options o;
  o.path = path;
  o.read_only = read_only;
  store_error err;
  auto s = open_sqlite_store(o, err);
  INFO("open " << path << ": " << err.message);
  REQUIRE(s != nullptr);
  return s;
}

/// Every backend-independent test runs once per backend.
#define KLYNAA_EACH_BACKEND GENERATE(as<std::string>{}, "sqlite", "postgres", "journal")

/// Where one test's store lives: a SQLite file in a temp dir, a fresh database
/// on the test process's PostgreSQL server, or a journal in a temp dir (on a
/// fault-injecting file system: journal_fault_fs.hpp).
struct store_at {
  std::string backend;
  temp_dir dir;
  std::string database;  ///< postgres
  std::shared_ptr<klynaa::test::fault_fs> fs = std::make_shared<klynaa::test::fault_fs>();  ///< journal

  explicit store_at(std::string b) : backend(std::move(b)) {
    if (backend == "postgres") database = klynaa::test::pg_server::get().fresh_database();
  }
  std::string url() const { return klynaa::test::pg_server::get().url(database); }
  std::string shown_url() const { return mask_pg_url(url()); }

  std::string journal_dir() const { return dir / "journal"; }

  std::unique_ptr<store> try_open(bool read_only, store_error& err) {
    if (backend == "journal") {
      journal_options o;
      o.dir = journal_dir();
      o.read_only = read_only;
      o.fs = fs;
      return open_journal_store(o, err);
    }
    if (backend == "sqlite") {
      sqlite_options o;
      o.path = dir / "klynaa.db";
      o.read_only = read_only;
      return open_sqlite_store(o, err);
    }
    pg_options o;
    o.url = url();
    o.read_only = read_only;
    o.application_name = "store_test";
    return open_pg_store(o, err);
  }
  std::unique_ptr<store> open(bool read_only = false) {
    store_error err;
    auto s = try_open(read_only, err);
    INFO(backend << ": open: " << err.message);
    REQUIRE(s != nullptr);
    return s;
  }
  /// Runs SQL on the store's database through a separate connection, in the
  /// backend's own dialect; for the journal, runs `journal` instead (a test with
  /// no journal equivalent fails there).
  void sql(const std::string& sqlite_sql, const std::string& pg_sql,
           const std::function<void(store_at&)>& journal = nullptr);
};

inline int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

inline job_record make_job(const std::string& id, int64_t seq,
                           const std::string& function = "sendPickupNotification",
                           const std::string& okey = "") {
  job_record j;
  j.id = id;
  j.function = function;
  j.data_json = R"({"n":)" + std::to_string(seq) + "}";
  j.ordering_key = okey;
  j.seq = seq;
  j.ts_ms = 1700000000000 + seq;
  j.created_ms = 1700000000500 + seq;
  return j;
}

inline job_record auto_release(const std::string& id, int64_t seq, int64_t pickup, int64_t due) {
  auto j = make_job(id, seq, "processEscrowRelease", "pickup:" + std::to_string(pickup));
  j.auto_release = true;
  j.due_ms = due;
  j.data_json = R"({"pickup_id":)" + std::to_string(pickup) + R"(,"release_reason":"auto_release"})";
  return j;
}

inline new_request make_request(const std::string& id, std::vector<job_record> jobs, int op = 0,
                                const std::string& type = "pickup.accepted") {
  new_request r;
  r.id = id;
  r.op = op;
  r.type = type;
  r.ts_ms = 1700000000000;
  r.accepted_ms = wall_ms();
  for (auto& j : jobs) j.request_id = id;
  r.jobs = std::move(jobs);
  return r;
}

/// pickup.delivered of `pickup`: a notification now and the auto-release later.
inline new_request delivered(const std::string& id, int64_t pickup, int64_t seq) {
  auto okey = "pickup:" + std::to_string(pickup);
  return make_request(id,
                      {make_job(id + "#1", seq, "sendPickupNotification", okey),
                       auto_release(id + "#2", seq + 1, pickup, wall_ms() + 86400000)},
                      0, "pickup.delivered");
}

inline new_request closing(const std::string& id, int64_t pickup, int64_t seq,
                           const std::string& type = "pickup.confirmed") {
  auto okey = "pickup:" + std::to_string(pickup);
  auto r = make_request(id, {make_job(id + "#1", seq, "processEscrowRelease", okey)}, 0, type);
  r.closes_pickup = pickup;
  return r;
}

inline commit_outcome commit_ok(store& s, const batch& b) {
  store_error err;
  auto out = s.commit(b, err);
  INFO("commit: " << err.message);
  REQUIRE(out.has_value());
  REQUIRE(out->requests.size() == b.requests.size());
  REQUIRE(out->children_inserted.size() == b.children.size());
  return *out;
}

inline request_outcome commit_one(store& s, new_request r) {
  batch b;
  b.requests.push_back(std::move(r));
  return commit_ok(s, b).requests.at(0);
}

inline std::vector<job_record> unfinished(store& s) {
  std::vector<job_record> out;
  store_error err;
  REQUIRE(s.load_unfinished([&](job_record&& j) { out.push_back(std::move(j)); }, err));
  return out;
}

inline std::vector<std::string> ids_of(const std::vector<job_record>& jobs) {
  std::vector<std::string> ids;
  for (auto& j : jobs) ids.push_back(j.id);
  return ids;
}

inline int64_t total_jobs(store& s) {
  int64_t n = 0;
  for (auto& [fn, st, count] : s.count_by_function()) n += count;
  return n;
}

inline job_update update(const std::string& id, job_state state, int64_t attempts, int64_t seq) {
  job_update u;
  u.id = id;
  u.state = state;
  u.attempts = attempts;
  u.seq = seq;
  return u;
}

/// Runs one SQL text on the store file through a separate connection.
inline void raw_sql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* msg = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg);
  std::string m = msg ? msg : "";
  sqlite3_free(msg);
  sqlite3_close(db);
  INFO(sql << ": " << m);
  REQUIRE(rc == SQLITE_OK);
}

inline int64_t raw_count(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
  int64_t v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
  sqlite3_finalize(s);
  sqlite3_close(db);
  return v;
}

inline void store_at::sql(const std::string& sqlite_sql, const std::string& pg_sql,
                          const std::function<void(store_at&)>& journal) {
  if (backend == "journal") {
    INFO("no journal equivalent of: " << sqlite_sql);
    REQUIRE(journal);
    journal(*this);
  } else if (backend == "sqlite") {
    raw_sql(dir / "klynaa.db", sqlite_sql);
  } else {
    klynaa::test::pg_server::get().sql(database, pg_sql);
  }
}

}  // namespace store_fixture
