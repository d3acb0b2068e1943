// Tests of broker/store: dedup of request ids (contract §1 `duplicate`),
// auto-release cancellation (§3), job updates and history, recovery after
// restart — each over both implementations, SQLite and PostgreSQL (a real server
// of the test process's own, pg_server.hpp) — and, for SQLite, durability across
// a kill -9. pg_store_test.cpp has what only PostgreSQL has (URLs, rights, lost
// connections, the lease).
#include "broker/store.hpp"
#include "broker/pg_store.hpp"
#include "pg_server.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

using namespace klynaa::broker;
using klynaa::test::temp_dir;

namespace {

std::unique_ptr<store> open_store(const std::string& path, bool read_only = false) {
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
#define KLYNAA_EACH_BACKEND GENERATE(as<std::string>{}, "sqlite", "postgres")

/// Where one test's store lives: a SQLite file in a temp dir, or a fresh
/// database on the test process's PostgreSQL server.
struct store_at {
  std::string backend;
  temp_dir dir;
  std::string database;  ///< postgres

  explicit store_at(std::string b) : backend(std::move(b)) {
    if (backend == "postgres") database = klynaa::test::pg_server::get().fresh_database();
  }
  std::string url() const { return klynaa::test::pg_server::get().url(database); }
  std::string shown_url() const { return mask_pg_url(url()); }

  std::unique_ptr<store> try_open(bool read_only, store_error& err) {
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
  /// backend's own dialect.
  void sql(const std::string& sqlite_sql, const std::string& pg_sql);
};

int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

job_record make_job(const std::string& id, int64_t seq,
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

job_record auto_release(const std::string& id, int64_t seq, int64_t pickup, int64_t due) {
  auto j = make_job(id, seq, "processEscrowRelease", "pickup:" + std::to_string(pickup));
  j.auto_release = true;
  j.due_ms = due;
  j.data_json = R"({"pickup_id":)" + std::to_string(pickup) + R"(,"release_reason":"auto_release"})";
  return j;
}

new_request make_request(const std::string& id, std::vector<job_record> jobs, int op = 0,
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
new_request delivered(const std::string& id, int64_t pickup, int64_t seq) {
  auto okey = "pickup:" + std::to_string(pickup);
  return make_request(id,
                      {make_job(id + "#1", seq, "sendPickupNotification", okey),
                       auto_release(id + "#2", seq + 1, pickup, wall_ms() + 86400000)},
                      0, "pickup.delivered");
}

new_request closing(const std::string& id, int64_t pickup, int64_t seq,
                    const std::string& type = "pickup.confirmed") {
  auto okey = "pickup:" + std::to_string(pickup);
  auto r = make_request(id, {make_job(id + "#1", seq, "processEscrowRelease", okey)}, 0, type);
  r.closes_pickup = pickup;
  return r;
}

commit_outcome commit_ok(store& s, const batch& b) {
  store_error err;
  auto out = s.commit(b, err);
  INFO("commit: " << err.message);
  REQUIRE(out.has_value());
  REQUIRE(out->requests.size() == b.requests.size());
  REQUIRE(out->children_inserted.size() == b.children.size());
  return *out;
}

request_outcome commit_one(store& s, new_request r) {
  batch b;
  b.requests.push_back(std::move(r));
  return commit_ok(s, b).requests.at(0);
}

std::vector<job_record> unfinished(store& s) {
  std::vector<job_record> out;
  store_error err;
  REQUIRE(s.load_unfinished([&](job_record&& j) { out.push_back(std::move(j)); }, err));
  return out;
}

std::vector<std::string> ids_of(const std::vector<job_record>& jobs) {
  std::vector<std::string> ids;
  for (auto& j : jobs) ids.push_back(j.id);
  return ids;
}

int64_t total_jobs(store& s) {
  int64_t n = 0;
  for (auto& [fn, st, count] : s.count_by_function()) n += count;
  return n;
}

job_update update(const std::string& id, job_state state, int64_t attempts, int64_t seq) {
  job_update u;
  u.id = id;
  u.state = state;
  u.attempts = attempts;
  u.seq = seq;
  return u;
}

/// Runs one SQL text on the store file through a separate connection.
void raw_sql(const std::string& path, const std::string& sql) {
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

int64_t raw_count(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
  int64_t v = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
  sqlite3_finalize(s);
  sqlite3_close(db);
  return v;
}

void store_at::sql(const std::string& sqlite_sql, const std::string& pg_sql) {
  if (backend == "sqlite")
    raw_sql(dir / "klynaa.db", sqlite_sql);
  else
    klynaa::test::pg_server::get().sql(database, pg_sql);
}

}  // namespace

TEST_CASE("a committed request is found after the store is closed and reopened", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto first = make_request("evt-1", {make_job("evt-1#1", 1, "sendPickupNotification", "pickup:7"),
                                      make_job("evt-1#2", 2, "notifyNearbyWorkers", "")},
                            1, "pickup.created");
  first.jobs[1].due_ms = 1234;
  {
    auto s = at.open();
    CHECK(s->max_seq() == 0);
    auto out = commit_one(*s, first);
    CHECK(!out.duplicate);
    CHECK(out.job_ids == std::vector<std::string>{"evt-1#1", "evt-1#2"});
    CHECK(out.created == std::vector<uint32_t>{0, 1});  // indices into the request's jobs
    CHECK(out.cancelled.empty());
  }
  auto s = at.open();
  auto j = s->find_job("evt-1#2");
  REQUIRE(j);
  CHECK(j->request_id == "evt-1");
  CHECK(j->function == "notifyNearbyWorkers");
  CHECK(j->data_json == first.jobs[1].data_json);
  CHECK(j->ordering_key.empty());
  CHECK(j->seq == 2);
  CHECK(j->state == job_state::ready);
  CHECK(j->due_ms == 1234);
  CHECK(j->attempts == 0);
  CHECK(j->ts_ms == first.jobs[1].ts_ms);
  CHECK(j->created_ms == first.jobs[1].created_ms);
  CHECK(j->updated_ms > 0);
  CHECK(!j->auto_release);
  CHECK(s->find_job("evt-1#1")->ordering_key == "pickup:7");
  CHECK(!s->find_job("evt-1#3"));
  CHECK(s->max_seq() == 2);

  auto again = commit_one(*s, first);
  CHECK(again.duplicate);
  CHECK(again.original_op == 1);
  CHECK(again.job_ids == std::vector<std::string>{"evt-1#1", "evt-1#2"});
}

TEST_CASE("a duplicate id in a later batch returns the first job ids and op and stores nothing",
          "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1)}, /*op=*/1));
  REQUIRE(s->max_seq() == 1);

  // The repeat carries other jobs: none of them may be stored.
  auto dup = make_request("evt-1", {make_job("evt-1#1", 5), make_job("evt-1#2", 6)}, /*op=*/2);
  dup.closes_pickup = 7;
  auto pending = delivered("del-7", 7, 2);
  commit_one(*s, pending);
  const auto before = s->count_by_function();

  auto out = commit_one(*s, dup);
  CHECK(out.duplicate);
  CHECK(out.original_op == 1);
  CHECK(out.job_ids == std::vector<std::string>{"evt-1#1"});
  CHECK(out.created.empty());
  CHECK(out.cancelled.empty());  // a duplicate closes nothing
  REQUIRE(out.existing.size() == 1);
  CHECK(out.existing[0].id == "evt-1#1");
  CHECK(out.existing[0].seq == 1);
  CHECK(!s->find_job("evt-1#2"));
  CHECK(s->find_job("evt-1#1")->seq == 1);
  CHECK(s->find_job("del-7#2")->state == job_state::ready);
  CHECK(s->count_by_function() == before);
  CHECK(s->max_seq() == 3);
}

TEST_CASE("a duplicate id within the same batch returns the first job ids and op", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch b;
  b.requests.push_back(make_request("evt-9", {make_job("evt-9#1", 1)}, /*op=*/1));
  b.requests.push_back(make_request("other", {make_job("other#1", 2)}, 0));
  b.requests.push_back(make_request("evt-9", {make_job("evt-9#1", 3), make_job("evt-9#2", 4)}, 0));
  auto out = commit_ok(*s, b);

  CHECK(!out.requests[0].duplicate);
  CHECK(!out.requests[1].duplicate);
  auto& dup = out.requests[2];
  CHECK(dup.duplicate);
  CHECK(dup.original_op == 1);
  CHECK(dup.job_ids == std::vector<std::string>{"evt-9#1"});
  CHECK(dup.created.empty());
  REQUIRE(dup.existing.size() == 1);
  CHECK(dup.existing[0].seq == 1);
  CHECK(s->find_job("evt-9#1")->seq == 1);
  CHECK(!s->find_job("evt-9#2"));
  CHECK(total_jobs(*s) == 2);
}

TEST_CASE("a job created by a job is inserted only when its id is new", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  auto first = make_job("#escrow-released-7", 10, "sendPickupNotification", "pickup:7");
  first.data_json = R"({"pickup_id":7,"notification_type":"escrow_released","user_type":"worker"})";
  auto second = make_job("#escrow-released-7", 11, "sendPickupNotification", "pickup:7");
  second.data_json = R"({"pickup_id":7,"from":"second"})";

  batch b;
  b.children = {first, second, make_job("parent#1", 12)};
  auto out = commit_ok(*s, b);
  CHECK(out.children_inserted == std::vector<bool>{true, false, true});

  // A release retried by another path (or after a broker restart) creates it again.
  batch later;
  later.children = {second};
  CHECK(commit_ok(*s, later).children_inserted == std::vector<bool>{false});

  auto j = s->find_job("#escrow-released-7");
  REQUIRE(j);
  CHECK(j->seq == 10);
  CHECK(j->data_json == first.data_json);
  CHECK(total_jobs(*s) == 2);
}

TEST_CASE("closing a pickup cancels its pending auto-release", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  commit_one(*s, delivered("del-7", 7, 1));
  commit_one(*s, delivered("del-8", 8, 3));
  REQUIRE(s->find_job("del-7#2")->auto_release);

  auto out = commit_one(*s, closing("conf-7", 7, 5));
  CHECK(!out.duplicate);
  CHECK(out.cancelled == std::vector<std::string>{"del-7#2"});
  CHECK(out.job_ids == std::vector<std::string>{"conf-7#1"});

  auto j = s->find_job("del-7#2");
  REQUIRE(j);
  CHECK(j->state == job_state::cancelled);
  CHECK(s->find_job("del-7#1")->state == job_state::ready);  // only the auto-release
  CHECK(s->find_job("del-8#2")->state == job_state::ready);  // another pickup's stays
  auto ids = ids_of(unfinished(*s));
  CHECK(ids == std::vector<std::string>{"del-7#1", "del-8#1", "del-8#2", "conf-7#1"});

  // A dispute after the confirmation finds nothing left to cancel.
  auto disputed = commit_one(*s, closing("disp-7", 7, 6, "pickup.disputed"));
  CHECK(disputed.cancelled.empty());
  // The repeat of the confirmation is a duplicate and reports no cancellation again.
  auto dup = commit_one(*s, closing("conf-7", 7, 7));
  CHECK(dup.duplicate);
  CHECK(dup.cancelled.empty());
}

TEST_CASE("a running auto-release is not cancelled by closing its pickup", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  commit_one(*s, delivered("del-7", 7, 1));
  batch start;
  start.updates.push_back(update("del-7#2", job_state::running, 1, 2));
  commit_ok(*s, start);

  auto out = commit_one(*s, closing("conf-7", 7, 5));
  CHECK(out.cancelled.empty());  // already calling Django: its outcome decides
  CHECK(s->find_job("del-7#2")->state == job_state::running);
}

TEST_CASE("an auto-release for a closed pickup is not stored and not listed", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();

  SECTION("closed in an earlier batch") {
    commit_one(*s, closing("disp-7", 7, 1, "pickup.disputed"));
    auto out = commit_one(*s, delivered("del-7", 7, 2));
    CHECK(!out.duplicate);
    CHECK(out.job_ids == std::vector<std::string>{"del-7#1"});
    CHECK(out.created == std::vector<uint32_t>{0});  // the notification, not the auto-release
    CHECK(!s->find_job("del-7#2"));
    // Its repeat answers the same list.
    auto dup = commit_one(*s, delivered("del-7", 7, 4));
    CHECK(dup.duplicate);
    CHECK(dup.job_ids == std::vector<std::string>{"del-7#1"});
  }
  SECTION("closed earlier in the same batch") {
    batch b;
    b.requests.push_back(closing("conf-7", 7, 1));
    b.requests.push_back(delivered("del-7", 7, 2));
    b.requests.push_back(delivered("del-8", 8, 4));
    auto out = commit_ok(*s, b);
    CHECK(out.requests[1].job_ids == std::vector<std::string>{"del-7#1"});
    CHECK(!s->find_job("del-7#2"));
    CHECK(out.requests[2].job_ids == std::vector<std::string>{"del-8#1", "del-8#2"});
  }
  SECTION("delivered and closed in the same batch, in that order") {
    batch b;
    b.requests.push_back(delivered("del-7", 7, 1));
    b.requests.push_back(closing("conf-7", 7, 3));
    auto out = commit_ok(*s, b);
    CHECK(out.requests[0].job_ids == std::vector<std::string>{"del-7#1", "del-7#2"});
    CHECK(out.requests[1].cancelled == std::vector<std::string>{"del-7#2"});
    CHECK(s->find_job("del-7#2")->state == job_state::cancelled);
  }
  SECTION("a closed pickup survives a reopen") {
    commit_one(*s, closing("conf-7", 7, 1));
    s.reset();
    s = at.open();
    CHECK(commit_one(*s, delivered("del-7", 7, 2)).job_ids == std::vector<std::string>{"del-7#1"});
  }
}

TEST_CASE("an update changes state, attempts and due and writes the attempt history", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1)}));
  CHECK(s->history_json("evt-1#1") == "[]");

  batch start;
  start.updates.push_back(update("evt-1#1", job_state::running, 1, 1));
  commit_ok(*s, start);
  CHECK(s->find_job("evt-1#1")->state == job_state::running);
  CHECK(s->find_job("evt-1#1")->attempts == 1);
  CHECK(s->history_json("evt-1#1") == "[]");  // no outcome, no history entry

  const std::string err1 = R"({"code":"transient","message":"HTTP 503","http_status":503})";
  batch retry;
  auto u = update("evt-1#1", job_state::retry_wait, 1, 1);
  u.due_ms = 99000;
  u.last_error_json = err1;
  u.node = "node-a";
  u.outcome = "retry";
  u.duration_ms = 42;
  retry.updates.push_back(u);
  commit_ok(*s, retry);
  auto j = s->find_job("evt-1#1");
  CHECK(j->state == job_state::retry_wait);
  CHECK(j->due_ms == 99000);
  CHECK(j->last_error_json == err1);

  batch done;
  auto d = update("evt-1#1", job_state::done, 2, 17);  // resequenced meanwhile
  d.due_ms = 99000;
  d.result_json = R"({"sent":1})";
  d.node = "node-b";
  d.outcome = "ok";
  d.duration_ms = 7;
  done.updates.push_back(d);
  commit_ok(*s, done);
  j = s->find_job("evt-1#1");
  CHECK(j->state == job_state::done);
  CHECK(j->attempts == 2);
  CHECK(j->seq == 17);
  CHECK(j->result_json == R"({"sent":1})");
  CHECK(j->last_error_json.empty());
  CHECK(j->updated_ms >= j->created_ms);

  auto h = nlohmann::json::parse(s->history_json("evt-1#1"));
  REQUIRE(h.size() == 2);
  CHECK(h[0]["attempt"] == 1);
  CHECK(h[0]["node"] == "node-a");
  CHECK(h[0]["outcome"] == "retry");
  CHECK(h[0]["duration_ms"] == 42);
  CHECK(h[0]["error"]["http_status"] == 503);
  CHECK(h[0]["at_ms"].get<int64_t>() > 0);
  CHECK(h[1]["attempt"] == 2);
  CHECK(h[1]["node"] == "node-b");
  CHECK(h[1]["outcome"] == "ok");
  CHECK(h[1]["duration_ms"] == 7);
  CHECK(h[1]["at_ms"].get<int64_t>() >= h[0]["at_ms"].get<int64_t>());
  CHECK(h[1]["error"].is_null());
  CHECK(s->history_json("no-such-job") == "[]");

  // An update of an unknown job changes nothing and does not fail the batch.
  batch ghost;
  ghost.updates.push_back(update("ghost", job_state::done, 1, 1));
  commit_ok(*s, ghost);
  CHECK(!s->find_job("ghost"));
}

TEST_CASE("load_unfinished returns only ready, running and retry_wait jobs in seq order",
          "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  // Accepted out of seq order on purpose: the store sorts.
  std::vector<std::pair<std::string, job_state>> jobs = {
      {"j5", job_state::retry_wait}, {"j2", job_state::done},  {"j9", job_state::ready},
      {"j1", job_state::running},    {"j4", job_state::dead},  {"j3", job_state::ready},
      {"j7", job_state::cancelled},  {"j8", job_state::running}};
  batch b;
  for (auto& [id, st] : jobs) {
    int64_t seq = std::stoll(id.substr(1));
    b.requests.push_back(make_request("r-" + id, {make_job(id, seq)}));
  }
  commit_ok(*s, b);
  batch u;
  for (auto& [id, st] : jobs)
    if (st != job_state::ready) u.updates.push_back(update(id, st, 1, std::stoll(id.substr(1))));
  commit_ok(*s, u);

  auto load = [&] {
    auto loaded = unfinished(*s);
    CHECK(ids_of(loaded) == std::vector<std::string>{"j1", "j3", "j5", "j8", "j9"});
    for (auto& j : loaded) CHECK(!finished(j.state));
    return loaded;
  };
  auto loaded = load();
  CHECK(loaded[0].state == job_state::running);
  CHECK(loaded[2].state == job_state::retry_wait);
  CHECK(s->max_seq() == 9);  // finished jobs count too

  s.reset();
  s = at.open();
  load();
  CHECK(s->max_seq() == 9);
}

TEST_CASE("list_jobs returns the jobs of one state, newest first, up to the limit", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch b;
  for (int i = 1; i <= 4; ++i)
    b.requests.push_back(make_request("r" + std::to_string(i), {make_job("j" + std::to_string(i), i)}));
  commit_ok(*s, b);
  for (auto id : {"j2", "j4", "j1"}) {  // dead in this order, a few ms apart
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    batch u;
    u.updates.push_back(update(id, job_state::dead, 8, 1));
    commit_ok(*s, u);
  }
  CHECK(ids_of(s->list_jobs(job_state::dead, 10)) == std::vector<std::string>{"j1", "j4", "j2"});
  CHECK(ids_of(s->list_jobs(job_state::dead, 2)) == std::vector<std::string>{"j1", "j4"});
  CHECK(ids_of(s->list_jobs(job_state::ready, 10)) == std::vector<std::string>{"j3"});
  CHECK(s->list_jobs(job_state::done, 10).empty());
}

TEST_CASE("count_by_function counts jobs per function and state", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  CHECK(s->count_by_function().empty());
  batch b;
  b.requests.push_back(make_request("a", {make_job("a#1", 1, "sendPickupNotification"),
                                          make_job("a#2", 2, "sendPickupNotification"),
                                          make_job("a#3", 3, "notifyNearbyWorkers")}));
  b.requests.push_back(make_request("b", {make_job("b#1", 4, "sendPickupNotification")}));
  commit_ok(*s, b);
  batch u;
  u.updates.push_back(update("a#1", job_state::dead, 8, 1));
  u.updates.push_back(update("a#3", job_state::done, 1, 3));
  commit_ok(*s, u);

  using row = std::tuple<std::string, job_state, int64_t>;
  auto rows = s->count_by_function();
  std::set<row> got(rows.begin(), rows.end());
  CHECK(rows.size() == got.size());  // one row per pair
  CHECK(got == std::set<row>{{"sendPickupNotification", job_state::ready, 2},
                             {"sendPickupNotification", job_state::dead, 1},
                             {"notifyNearbyWorkers", job_state::done, 1}});
}

TEST_CASE("prune removes finished jobs and old dedup keys but never unfinished jobs", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  const int64_t now = wall_ms();
  auto old_req = [&](const std::string& id, std::vector<job_record> jobs) {
    auto r = make_request(id, std::move(jobs));
    r.accepted_ms = now - 8LL * 86400000;
    return r;
  };
  batch b;
  b.requests.push_back(old_req("old-done", {make_job("old-done#1", 1)}));
  b.requests.push_back(old_req("old-ready", {make_job("old-ready#1", 2)}));
  b.requests.push_back(old_req("old-running", {make_job("old-running#1", 3)}));
  b.requests.push_back(old_req("old-retry", {make_job("old-retry#1", 4)}));
  b.requests.push_back(old_req("old-dead", {make_job("old-dead#1", 5)}));
  b.requests.push_back(delivered("old-del", 7, 6));
  b.requests.back().accepted_ms = now - 8LL * 86400000;
  auto recent = make_request("recent", {make_job("recent#1", 8)});
  recent.accepted_ms = now + 3600000;  // after the cut below
  b.requests.push_back(recent);
  commit_ok(*s, b);
  batch u;
  auto finished_update = update("old-done#1", job_state::done, 1, 1);
  finished_update.outcome = "ok";
  u.updates.push_back(finished_update);
  u.updates.push_back(update("old-running#1", job_state::running, 1, 3));
  u.updates.push_back(update("old-retry#1", job_state::retry_wait, 1, 4));
  u.updates.push_back(update("old-dead#1", job_state::dead, 8, 5));
  commit_ok(*s, u);
  commit_one(*s, closing("conf-7", 7, 9));  // cancels old-del#2
  REQUIRE(s->find_job("old-del#2")->state == job_state::cancelled);
  batch finish_recent;
  finish_recent.updates.push_back(update("recent#1", job_state::done, 1, 8));
  commit_ok(*s, finish_recent);
  REQUIRE(nlohmann::json::parse(s->history_json("old-done#1")).size() == 1);

  // Everything finished was updated before this cut; only the old requests are.
  const int64_t cut = wall_ms() + 1000;
  CHECK(s->prune(cut) > 0);

  CHECK(!s->find_job("old-done#1"));
  CHECK(!s->find_job("old-del#2"));  // cancelled
  CHECK(!s->find_job("recent#1"));   // done
  CHECK(s->history_json("old-done#1") == "[]");
  for (auto id : {"old-ready#1", "old-running#1", "old-retry#1", "old-del#1"}) {
    INFO(id);
    CHECK(s->find_job(id));
  }
  // Dead jobs stay in the dead-letter queue until purged by an operator.
  CHECK(s->find_job("old-dead#1"));
  CHECK(ids_of(unfinished(*s)) ==
        std::vector<std::string>{"old-ready#1", "old-running#1", "old-retry#1", "old-del#1",
                                 "conf-7#1"});

  // The recent dedup key is kept; the old ones are gone.
  CHECK(commit_one(*s, make_request("recent", {make_job("recent#1", 20)})).duplicate);
  auto again = commit_one(*s, make_request("old-done", {make_job("old-done#1", 21)}));
  CHECK(!again.duplicate);
  // A request one of whose jobs is still there keeps its dedup key.
  CHECK(commit_one(*s, make_request("old-ready", {make_job("old-ready#1", 22)})).duplicate);
  CHECK(commit_one(*s, make_request("old-dead", {make_job("old-dead#1", 23)})).duplicate);

  CHECK(s->prune(0) == 0);
}

TEST_CASE("pruning runs in chunks of batch::prune_limit, inside an ordinary commit", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch b;
  for (int i = 0; i < 5; ++i) {
    auto id = "p" + std::to_string(i);
    b.requests.push_back(make_request(id, {make_job(id + "#1", i + 1)}));
  }
  commit_ok(*s, b);
  batch done;
  for (int i = 0; i < 5; ++i) done.updates.push_back(update("p" + std::to_string(i) + "#1", job_state::done, 1, i + 1));
  commit_ok(*s, done);
  const int64_t cut = wall_ms() + 1000;
  int64_t total = 0;
  int chunks = 0;
  for (bool more = true; more; ++chunks) {
    batch c;
    c.prune_before_ms = cut;
    c.prune_limit = 2;
    REQUIRE(!c.empty());
    auto out = commit_ok(*s, c);
    total += out.pruned;
    more = out.prune_more;
    REQUIRE(chunks < 10);
  }
  CHECK(chunks == 3);  // 2 + 2 + 1 jobs (the requests follow their jobs)
  CHECK(total == 10);  // 5 jobs and 5 dedup keys
  for (int i = 0; i < 5; ++i) CHECK(!s->find_job("p" + std::to_string(i) + "#1"));
}

TEST_CASE("a store with a newer schema version refuses to open and names the version",
          "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  { auto s = at.open(); }
  at.sql("UPDATE meta SET value = '7' WHERE key = 'schema_version'",
         "UPDATE klynaa.meta SET value = '7' WHERE key = 'schema_version'");
  for (bool read_only : {false, true}) {
    INFO("read_only " << read_only);
    store_error err;
    auto s = at.try_open(read_only, err);
    CHECK(s == nullptr);
    CHECK(err.message.find("schema version 7") != std::string::npos);
    if (at.backend == "postgres") {
      CHECK(err.message.find("store.url " + at.shown_url()) != std::string::npos);
      CHECK(err.message.find(klynaa::test::pg_server::password) == std::string::npos);
    }
  }
  // An older or equal version opens.
  at.sql("UPDATE meta SET value = '1' WHERE key = 'schema_version'",
         "UPDATE klynaa.meta SET value = '1' WHERE key = 'schema_version'");
  at.open();
  at.open(true);
}

TEST_CASE("replaying dead jobs makes them ready with new seqs, a fresh budget and their history kept",
          "[store][dlq]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch b;
  for (int i = 1; i <= 4; ++i) {
    auto id = "d" + std::to_string(i);
    b.requests.push_back(make_request(id, {make_job(id + "#1", i, "processEscrowRelease", "pickup:" + std::to_string(i))}));
  }
  commit_ok(*s, b);
  batch kill;
  for (int i = 1; i <= 3; ++i) {
    auto u = update("d" + std::to_string(i) + "#1", job_state::dead, 5, i);
    u.outcome = "dead";
    kill.updates.push_back(u);
  }
  commit_ok(*s, kill);

  batch one;
  one.replay_ids = {"d2#1", "d4#1", "nope", "d2#1"};  // d4 is not dead, nope does not exist; d2 once
  one.replay_seq_base = 100;
  auto out = commit_ok(*s, one);
  REQUIRE(out.replayed.size() == 1);
  auto& r = out.replayed[0];
  CHECK(r.id == "d2#1");
  CHECK(r.state == job_state::ready);
  CHECK(r.seq == 100);
  CHECK(r.attempts == 5);
  CHECK(r.attempt_base == 5);  // the next attempt is 6, the first of a fresh budget
  CHECK(r.ordering_key == "pickup:2");
  CHECK(s->find_job("d2#1")->state == job_state::ready);
  CHECK(nlohmann::json::parse(s->history_json("d2#1")).size() == 1);  // history kept
  CHECK(ids_of(unfinished(*s)) == std::vector<std::string>{"d4#1", "d2#1"});  // by seq: after d4

  batch all;
  all.replay_all = true;
  all.replay_limit = 1;  // the oldest first, and more remain
  all.replay_seq_base = 200;
  auto first = commit_ok(*s, all);
  REQUIRE(first.replayed.size() == 1);
  CHECK(first.replayed[0].id == "d1#1");
  CHECK(first.replay_more);
  all.replay_seq_base = 300;
  auto second = commit_ok(*s, all);
  REQUIRE(second.replayed.size() == 1);
  CHECK(second.replayed[0].id == "d3#1");
  CHECK(!second.replay_more);
  CHECK(s->list_jobs(job_state::dead, 10).empty());
}

TEST_CASE("purging dead jobs deletes them and their history, and nothing else", "[store][dlq]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch b;
  for (int i = 1; i <= 3; ++i) {
    auto id = "p" + std::to_string(i);
    b.requests.push_back(make_request(id, {make_job(id + "#1", i)}));
  }
  commit_ok(*s, b);
  batch kill;
  for (int i = 1; i <= 2; ++i) {
    auto u = update("p" + std::to_string(i) + "#1", job_state::dead, 3, i);
    u.outcome = "dead";
    kill.updates.push_back(u);
  }
  commit_ok(*s, kill);
  batch one;
  one.purge_ids = {"p1#1", "p3#1", "p1#1"};  // p3 is not dead: kept; p1 named twice, purged once
  auto out = commit_ok(*s, one);
  CHECK(out.purged == std::vector<std::string>{"p1#1"});
  CHECK(!s->find_job("p1#1"));
  CHECK(s->history_json("p1#1") == "[]");
  CHECK(s->find_job("p3#1"));
  batch all;
  all.purge_all = true;
  CHECK(commit_ok(*s, all).purged == std::vector<std::string>{"p2#1"});
  CHECK(s->find_job("p3#1"));
  CHECK(s->list_jobs(job_state::dead, 10).empty());
}

TEST_CASE("a version 1 store is upgraded in place: its jobs gain attempt_base 0", "[store]") {
  temp_dir dir;
  {
    auto s = open_store(dir / "klynaa.db");
    commit_one(*s, make_request("v1", {make_job("v1#1", 1)}));
  }
  raw_sql(dir / "klynaa.db", "ALTER TABLE jobs DROP COLUMN attempt_base; "
                    "UPDATE meta SET value = '1' WHERE key = 'schema_version'");
  {
    sqlite_options o;
    o.path = dir / "klynaa.db";
    o.read_only = true;
    store_error err;
    CHECK(open_sqlite_store(o, err) == nullptr);  // a reader cannot upgrade
    CHECK(err.message.find("schema version 1") != std::string::npos);
  }
  auto s = open_store(dir / "klynaa.db");
  auto j = s->find_job("v1#1");
  REQUIRE(j);
  CHECK(j->attempt_base == 0);
  CHECK(ids_of(unfinished(*s)) == std::vector<std::string>{"v1#1"});
}

TEST_CASE("a version 2 store is upgraded in place: its ok attempts are shown once, new ones too",
          "[store]") {
  temp_dir dir;
  {
    auto s = open_store(dir / "klynaa.db");
    commit_one(*s, make_request("v2", {make_job("v2#1", 1), make_job("v2#2", 2)}));
  }
  // Version 2 kept a successful attempt as an attempts row, like any other.
  raw_sql(dir / "klynaa.db", "ALTER TABLE jobs DROP COLUMN ok_node; ALTER TABLE jobs DROP COLUMN ok_duration_ms; "
                    "ALTER TABLE jobs DROP COLUMN ok_at_ms; "
                    "UPDATE jobs SET state = 3, attempts = 1 WHERE id = 'v2#1'; "
                    "INSERT INTO attempts VALUES('v2#1', 1, 'node-old', 'ok', '', 5, 1700000000000); "
                    "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
  auto s = open_store(dir / "klynaa.db");
  auto old = nlohmann::json::parse(s->history_json("v2#1"));
  REQUIRE(old.size() == 1);
  CHECK(old[0]["node"] == "node-old");
  CHECK(old[0]["outcome"] == "ok");
  batch done;
  auto d = update("v2#2", job_state::done, 1, 2);
  d.node = "node-new";
  d.outcome = "ok";
  d.duration_ms = 3;
  done.updates.push_back(d);
  commit_ok(*s, done);
  auto h = nlohmann::json::parse(s->history_json("v2#2"));
  REQUIRE(h.size() == 1);
  CHECK(h[0]["node"] == "node-new");
  CHECK(h[0]["duration_ms"] == 3);
  CHECK(h[0]["attempt"] == 1);
}

TEST_CASE("a store that cannot be opened says which file", "[store]") {
  temp_dir dir;
  sqlite_options o;
  o.path = dir.path + "/no/such/dir/klynaa.db";
  store_error err;
  CHECK(open_sqlite_store(o, err) == nullptr);
  CHECK(err.message.find(o.path) != std::string::npos);
}

TEST_CASE("a failed commit applies nothing of its batch and says why", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1)}));
  commit_one(*s, delivered("del-7", 7, 2));
  // A request the database refuses, as a full disk or an I/O error would.
  at.sql("CREATE TRIGGER refuse_boom BEFORE INSERT ON requests WHEN NEW.id LIKE 'boom%' "
         "BEGIN SELECT RAISE(ABORT, 'boom requests are refused'); END",
         "CREATE FUNCTION klynaa.refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
         "IF NEW.id LIKE 'boom%' THEN RAISE EXCEPTION 'boom requests are refused'; END IF; "
         "RETURN NEW; END $$; CREATE TRIGGER refuse_boom BEFORE INSERT ON klynaa.requests "
         "FOR EACH ROW EXECUTE FUNCTION klynaa.refuse_boom()");

  batch b;
  b.requests.push_back(make_request("evt-2", {make_job("evt-2#1", 4)}));
  b.requests.push_back(closing("conf-7", 7, 5));
  b.updates.push_back(update("evt-1#1", job_state::done, 1, 1));
  b.children.push_back(make_job("#escrow-released-7", 6));
  b.requests.push_back(make_request("boom-1", {make_job("boom-1#1", 7)}));
  store_error err;
  CHECK(!s->commit(b, err));
  CHECK(err.message.find("boom requests are refused") != std::string::npos);

  auto check_nothing_applied = [&](store& st) {
    CHECK(!st.find_job("evt-2#1"));
    CHECK(!st.find_job("conf-7#1"));
    CHECK(!st.find_job("#escrow-released-7"));
    CHECK(!st.find_job("boom-1#1"));
    CHECK(st.find_job("evt-1#1")->state == job_state::ready);
    CHECK(st.find_job("del-7#2")->state == job_state::ready);  // not cancelled
    CHECK(st.max_seq() == 3);
  };
  check_nothing_applied(*s);

  // Regression: the statement that failed stayed un-reset, so every later commit
  // using it failed too ("bad parameter or other API misuse") and the broker
  // rejected every request until restarted.
  SECTION("the next commit works") {
    for (int round = 0; round < 2; ++round) {
      batch good = b;
      good.requests.pop_back();
      auto out = commit_ok(*s, good);
      CHECK(out.requests[0].duplicate == (round == 1));
      CHECK(out.requests[1].duplicate == (round == 1));
      CHECK(s->find_job("evt-2#1"));
      CHECK(s->find_job("evt-1#1")->state == job_state::done);
      CHECK(s->find_job("del-7#2")->state == job_state::cancelled);
      // And a failure again leaves the store usable again.
      batch bad;
      bad.requests.push_back(make_request("boom-2", {}));
      store_error e2;
      CHECK(!s->commit(bad, e2));
      CHECK(e2.message.find("boom requests are refused") != std::string::npos);
    }
  }
  SECTION("nothing of it is there after a reopen") {
    s.reset();
    auto again = at.open();
    check_nothing_applied(*again);
  }
}

TEST_CASE("a read-only store refuses commits and changes nothing", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  {
    auto s = at.open();
    commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1)}));
  }
  {
    auto ro = at.open(/*read_only=*/true);
    CHECK(ro->find_job("evt-1#1"));
    CHECK(ro->max_seq() == 1);
    batch b;
    b.requests.push_back(make_request("evt-2", {make_job("evt-2#1", 2)}));
    b.updates.push_back(update("evt-1#1", job_state::done, 1, 1));
    store_error err;
    CHECK(!ro->commit(b, err));
    CHECK(!err.message.empty());
    CHECK(!ro->find_job("evt-2#1"));
  }
  auto s = at.open();
  CHECK(!s->find_job("evt-2#1"));
  CHECK(s->find_job("evt-1#1")->state == job_state::ready);
  CHECK(!commit_one(*s, make_request("evt-2", {make_job("evt-2#1", 2)})).duplicate);
}

namespace {

/// The child of the kill -9 test: commits batches of 1 to 4 requests in a loop and
/// writes the id of each committed request to `fd`, one a line, once commit returned.
[[noreturn]] void commit_until_killed(const std::string& path, int round, int fd) {
  sqlite_options o;
  o.path = path;
  store_error err;
  auto s = open_sqlite_store(o, err);
  if (!s) _exit(2);
  int64_t seq = s->max_seq();
  for (int i = 0; i < 1000000; ++i) {
    batch b;
    for (int k = 0; k <= i % 4; ++k) {
      auto id = "r" + std::to_string(round) + "-" + std::to_string(i) + "-" + std::to_string(k);
      b.requests.push_back(make_request(id, {make_job(id + "#1", ++seq)}));
    }
    if (i > 0) {  // and a state change of an earlier job, as the broker batches them
      auto prev = "r" + std::to_string(round) + "-" + std::to_string(i - 1) + "-0#1";
      b.updates.push_back(update(prev, job_state::running, 1, 0));
    }
    if (!s->commit(b, err)) _exit(3);
    std::string acks;
    for (auto& r : b.requests) acks += r.id + "\n";
    for (size_t off = 0; off < acks.size();) {
      ssize_t n = ::write(fd, acks.data() + off, acks.size() - off);
      if (n <= 0) _exit(4);
      off += static_cast<size_t>(n);
    }
  }
  _exit(0);
}

/// Reads what is available on `fd` into `buf` for up to `ms`; false at end of file.
bool read_for(int fd, std::string& buf, int ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) <= 0) return true;
  char chunk[4096];
  ssize_t n = ::read(fd, chunk, sizeof chunk);
  if (n <= 0) return false;
  buf.append(chunk, static_cast<size_t>(n));
  return true;
}

}  // namespace

TEST_CASE("every request acknowledged before a kill -9 is a duplicate after reopening",
          "[store]") {
  temp_dir dir;
  std::mt19937 rng(std::random_device{}());
  size_t total_acked = 0;
  for (int round = 0; round < 4; ++round) {
    INFO("round " << round);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      commit_until_killed(dir / "klynaa.db", round, fds[1]);
    }
    ::close(fds[1]);

    // Wait for the first acknowledgement, then kill at a random moment after it.
    std::string buf;
    bool open = true;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (open && buf.find('\n') == std::string::npos &&
           std::chrono::steady_clock::now() < deadline)
      open = read_for(fds[0], buf, 20);
    auto kill_at = std::chrono::steady_clock::now() +
                   std::chrono::microseconds(std::uniform_int_distribution<int>(0, 300000)(rng));
    while (open && std::chrono::steady_clock::now() < kill_at) open = read_for(fds[0], buf, 1);
    ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    // What the child wrote before it died was acknowledged: read it to the end.
    while (read_for(fds[0], buf, 1000)) {
    }
    ::close(fds[0]);
    INFO("child status " << status);
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGKILL);

    std::vector<std::string> acked;
    for (size_t pos = 0, nl; (nl = buf.find('\n', pos)) != std::string::npos; pos = nl + 1)
      acked.push_back(buf.substr(pos, nl - pos));
    REQUIRE(!acked.empty());
    total_acked += acked.size();

    auto s = open_store(dir / "klynaa.db");
    batch again;
    for (auto& id : acked) again.requests.push_back(make_request(id, {make_job(id + "#9", 1)}));
    auto out = commit_ok(*s, again);
    for (size_t i = 0; i < acked.size(); ++i) {
      INFO(acked[i]);
      CHECK(out.requests[i].duplicate);
      CHECK(out.requests[i].job_ids == std::vector<std::string>{acked[i] + "#1"});
      REQUIRE(out.requests[i].existing.size() == 1);
    }
    CHECK(!s->find_job(acked.back() + "#9"));
    store_error err;
    CHECK(s->load_unfinished([](job_record&&) {}, err));
    s.reset();
    // Batches are atomic: every stored request has its one job, no more, no less.
    CHECK(raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM requests") ==
          raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM jobs"));
    CHECK(raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM requests") >=
          static_cast<int64_t>(total_acked));
    CHECK(raw_count(dir / "klynaa.db", "SELECT COUNT(*) FROM pragma_integrity_check WHERE "
                              "integrity_check <> 'ok'") == 0);
  }
}

TEST_CASE("a request that repeats a job id stores that job once, the first time", "[store]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  auto second = make_job("evt-1#1", 2);
  second.data_json = R"({"second":true})";
  auto out = commit_one(*s, make_request("evt-1", {make_job("evt-1#1", 1), second, make_job("evt-1#2", 3)}));
  CHECK(out.job_ids == std::vector<std::string>{"evt-1#1", "evt-1#2"});
  CHECK(out.created == std::vector<uint32_t>{0, 2});  // the first evt-1#1 and evt-1#2
  CHECK(s->find_job("evt-1#1")->seq == 1);
  CHECK(s->find_job("evt-1#1")->data_json == make_job("evt-1#1", 1).data_json);
  CHECK(commit_one(*s, make_request("evt-1", {})).job_ids == std::vector<std::string>{"evt-1#1", "evt-1#2"});
}
