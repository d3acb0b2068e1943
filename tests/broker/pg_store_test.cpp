// Tests of what only the PostgreSQL store has (broker/pg_store.hpp): store.url
// in every error with its password masked (unreachable server, wrong password,
// missing rights), a lost connection failing one commit and the next one
// reconnecting, and the lease that fences a broker that lost it. The behaviour
// it shares with SQLite is tested over both in store_*test.cpp.
#include "broker/pg_store.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <libpq-fe.h>

#include "pg_server.hpp"
#include "tests/support/ports.hpp"

using namespace klynaa::broker;
using klynaa::test::closed_port;
using klynaa::test::pg_server;

namespace {

int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

new_request request(const std::string& id, int64_t seq) {
  new_request r;
  r.id = id;
  r.type = "pickup.accepted";
  r.ts_ms = 1700000000000;
  r.accepted_ms = wall_ms();
  job_record j;
  j.id = id + "#1";
  j.request_id = id;
  j.function = "sendPickupNotification";
  j.data_json = R"({"pickup_id":7})";
  j.ordering_key = "pickup:7";
  j.seq = seq;
  r.jobs.push_back(j);
  return r;
}

batch one_request(const std::string& id, int64_t seq) {
  batch b;
  b.requests.push_back(request(id, seq));
  return b;
}

pg_options options(const std::string& url, const std::string& app = "pg_store_test") {
  pg_options o;
  o.url = url;
  o.application_name = app;
  return o;
}

std::unique_ptr<pg_store> open_ok(const pg_options& o) {
  store_error err;
  auto s = pg_store::open(o, err);
  INFO("open: " << err.message);
  REQUIRE(s != nullptr);
  return s;
}

/// The message names store.url, masked, and never holds the password.
void check_names_url(const std::string& message, const std::string& url, const std::string& password) {
  INFO(message);
  CHECK(message.find("store.url " + mask_pg_url(url)) != std::string::npos);
  CHECK(mask_pg_url(url).find("****") != std::string::npos);
  CHECK(message.find(password) == std::string::npos);
}

}  // namespace

TEST_CASE("a postgres url is shown with its password masked", "[store][postgres]") {
  CHECK(mask_pg_url("postgresql://u:secret@db:5432/k") == "postgresql://u:****@db:5432/k");
  CHECK(mask_pg_url("postgres://u:p@ss@db/k?sslmode=require") == "postgres://u:****@db/k?sslmode=require");
  CHECK(mask_pg_url("postgres://u@db/k?password=secret&sslmode=require") ==
        "postgres://u@db/k?password=****&sslmode=require");
  CHECK(mask_pg_url("host=db password=secret dbname=k") == "host=db password=**** dbname=k");
  CHECK(mask_pg_url("host=db password = 'se cret' dbname=k") == "host=db password = **** dbname=k");
  CHECK(mask_pg_url("postgres://db/k") == "postgres://db/k");
}

TEST_CASE("an unreachable postgres server is an error naming store.url", "[store][postgres]") {
  const std::string url = "postgresql://klynaa:" + std::string(pg_server::password) + "@127.0.0.1:" +
                          std::to_string(closed_port()) + "/klynaa";
  store_error err;
  CHECK(open_pg_store(options(url), err) == nullptr);
  check_names_url(err.message, url, pg_server::password);
  CHECK(err.message.find("Connection refused") != std::string::npos);
}

TEST_CASE("a wrong postgres password is an error naming store.url but not the password",
          "[store][postgres]") {
  auto& server = pg_server::get();
  const std::string wrong = "wrong-pw-93d1";
  const std::string url = server.url(server.fresh_database(), "klynaa", wrong);
  store_error err;
  CHECK(open_pg_store(options(url), err) == nullptr);
  check_names_url(err.message, url, wrong);
  CHECK(err.message.find("password authentication failed") != std::string::npos);
}

TEST_CASE("a postgres role without CREATE on the database cannot create the store", "[store][postgres]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  const std::string url = server.url(db, "klynaa_plain", pg_server::plain_password);
  store_error err;
  CHECK(open_pg_store(options(url), err) == nullptr);
  check_names_url(err.message, url, pg_server::plain_password);
  CHECK(err.message.find("permission denied") != std::string::npos);
  CHECK(server.sql(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'klynaa'") == "0");

  // Once the owner created it, the role needs only the rights on its tables.
  open_ok(options(server.url(db)));
  server.sql(db, "GRANT USAGE ON SCHEMA klynaa TO klynaa_plain; "
                 "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA klynaa TO klynaa_plain; "
                 "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA klynaa TO klynaa_plain");
  auto s = open_ok(options(url));
  store_error cerr;
  INFO(cerr.message);
  CHECK(s->commit(one_request("evt-1", 1), cerr));
  CHECK(s->find_job("evt-1#1"));
}

TEST_CASE("a reader of a database without the store says that no broker created it",
          "[store][postgres]") {
  auto& server = pg_server::get();
  const std::string url = server.url(server.fresh_database());
  auto o = options(url);
  o.read_only = true;
  store_error err;
  CHECK(open_pg_store(o, err) == nullptr);
  check_names_url(err.message, url, pg_server::password);
  CHECK(err.message.find("no klynaa store there yet") != std::string::npos);
}

TEST_CASE("a commit after the postgres connection was lost fails and the next one reconnects",
          "[store][postgres]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  const std::string url = server.url(db);
  const std::string app = "lost-conn-" + db;
  auto s = open_ok(options(url, app));
  store_error err;
  REQUIRE(s->commit(one_request("before", 1), err));

  SECTION("its backend terminated") {
    CHECK(server.sql("postgres", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE application_name = '" + app + "'") == "1");
  }
  SECTION("the server restarted") {
    server.restart();
  }

  store_error lost;
  CHECK(!s->commit(one_request("lost", 2), lost));
  check_names_url(lost.message, url, pg_server::password);

  store_error again;
  auto out = s->commit(one_request("after", 3), again);
  INFO(again.message);
  REQUIRE(out);
  CHECK(!out->requests.at(0).duplicate);
  CHECK(s->find_job("before#1"));
  CHECK(s->find_job("after#1"));
  CHECK(!s->find_job("lost#1"));
  CHECK(s->max_seq() == 3);
  // A request the broker rejected is accepted when the client sends it again.
  CHECK(!s->commit(one_request("lost", 4), again)->requests.at(0).duplicate);
}

TEST_CASE("reads after a lost postgres connection reconnect", "[store][postgres]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  const std::string app = "reads-" + db;
  auto s = open_ok(options(server.url(db), app));
  store_error err;
  REQUIRE(s->commit(one_request("evt-1", 1), err));
  server.sql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '" +
                             app + "'");
  // The first read finds the connection gone and throws, the next reconnects.
  CHECK_THROWS_WITH(s->find_job("evt-1#1"), Catch::Contains("store.url " + mask_pg_url(server.url(db))));
  CHECK(s->find_job("evt-1#1"));
  std::vector<std::string> ids;
  CHECK(s->load_unfinished([&](job_record&& j) { ids.push_back(j.id); }, err));
  CHECK(ids == std::vector<std::string>{"evt-1#1"});
}

TEST_CASE("the lease is taken when free or expired and renewed by its holder", "[store][postgres][lease]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  auto a = open_ok(options(server.url(db), "broker-a"));
  auto b = open_ok(options(server.url(db), "broker-b"));

  store_error err;
  auto t1 = a->acquire_or_renew_lease("broker-a", 60000, &err);
  INFO(err.message);
  REQUIRE(t1);
  CHECK(a->acquire_or_renew_lease("broker-a", 60000, &err) == t1);  // renewed: same token
  CHECK(!b->acquire_or_renew_lease("broker-b", 60000, &err));       // held and valid
  CHECK(err.message.empty());
  CHECK(server.sql(db, "SELECT holder FROM klynaa.lease WHERE name = 'broker'") == "broker-a");

  // Expired: the next holder takes it with a greater token.
  server.sql(db, "UPDATE klynaa.lease SET expires_at = now() - interval '1 second'");
  auto t2 = b->acquire_or_renew_lease("broker-b", 60000, &err);
  REQUIRE(t2);
  CHECK(*t2 == *t1 + 1);
  CHECK(!a->acquire_or_renew_lease("broker-a", 60000, &err));
  CHECK(server.sql(db, "SELECT holder FROM klynaa.lease WHERE name = 'broker'") == "broker-b");

  // A short ttl lapses by the database's clock.
  REQUIRE(b->acquire_or_renew_lease("broker-b", 1, &err) == t2);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto t3 = a->acquire_or_renew_lease("broker-a", 60000, &err);
  REQUIRE(t3);
  CHECK(*t3 == *t2 + 1);
}

TEST_CASE("lease_holder names the holder and release_lease hands the lease over at once",
          "[store][postgres][lease]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  auto a = open_ok(options(server.url(db), "broker-a"));
  auto b = open_ok(options(server.url(db), "broker-b"));
  store_error err;
  CHECK(a->lease_holder(&err).empty());  // nobody ever held it
  CHECK(err.message.empty());
  auto t1 = a->acquire_or_renew_lease("broker-a", 60000, &err);
  REQUIRE(t1);
  CHECK(b->lease_holder() == "broker-a");
  // Only the holder with its token releases it.
  CHECK(b->release_lease("broker-b", *t1, &err));
  CHECK(a->release_lease("broker-a", *t1 + 7, &err));
  CHECK(!b->acquire_or_renew_lease("broker-b", 60000, &err));
  CHECK(a->release_lease("broker-a", *t1, &err));
  auto t2 = b->acquire_or_renew_lease("broker-b", 60000, &err);
  REQUIRE(t2);
  CHECK(*t2 == *t1 + 1);
  CHECK(a->lease_holder() == "broker-b");
}

TEST_CASE("a fenced store cannot commit once another broker took the lease", "[store][postgres][lease]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  auto a = open_ok(options(server.url(db), "broker-a"));
  auto b = open_ok(options(server.url(db), "broker-b"));
  store_error err;

  auto ta = a->acquire_or_renew_lease("broker-a", 60000, &err);
  REQUIRE(ta);
  a->set_fence(*ta);
  INFO(err.message);
  REQUIRE(a->commit(one_request("by-a", 1), err));

  server.sql(db, "UPDATE klynaa.lease SET expires_at = now() - interval '1 second'");
  auto tb = b->acquire_or_renew_lease("broker-b", 60000, &err);
  REQUIRE(tb);
  b->set_fence(*tb);

  // Everything of the batch is refused, not only the first statement.
  batch late = one_request("late-a", 2);
  late.updates.push_back(job_update{});
  late.updates.back().id = "by-a#1";
  late.updates.back().state = job_state::done;
  late.probe = true;
  store_error fenced;
  CHECK(!a->commit(late, fenced));
  CHECK(fenced.message.find("fenced: the lease is held by another broker") != std::string::npos);
  CHECK(!b->find_job("late-a#1"));
  CHECK(b->find_job("by-a#1")->state == job_state::ready);
  // It stays fenced: the connection is fine, the lease is not.
  CHECK(!a->commit(one_request("late-a", 3), fenced));
  CHECK(fenced.message.find("fenced") != std::string::npos);

  REQUIRE(b->commit(one_request("by-b", 4), err));
  CHECK(b->find_job("by-b#1"));
  // An unfenced store (a tool, a test) is not checked.
  auto c = open_ok(options(server.url(db), "tool"));
  CHECK(c->commit(one_request("by-tool", 5), err));
}

TEST_CASE("a renewal never waits for a commit in flight, a takeover does", "[store][postgres][lease]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  auto a = open_ok(options(server.url(db), "broker-a"));
  pg_options renewer_opts = options(server.url(db), "broker-a lease");
  renewer_opts.durable_commits = false;
  auto renewer = open_ok(renewer_opts);
  auto b = open_ok(options(server.url(db), "broker-b"));
  store_error err;
  auto token = a->acquire_or_renew_lease("broker-a", 60000, &err);
  REQUIRE(token);

  // A commit of broker-a in flight (its fence checked, its fsync pending): a
  // transaction that has run check_fence and not ended.
  PGconn* c = PQconnectdb(server.url(db).c_str());
  REQUIRE(PQstatus(c) == CONNECTION_OK);
  auto run = [c](const std::string& sql) {
    PGresult* r = PQexec(c, sql.c_str());
    const auto st = PQresultStatus(r);
    INFO(sql << ": " << PQresultErrorMessage(r));
    CHECK((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK));
    PQclear(r);
  };
  run("BEGIN");
  run("SELECT klynaa.check_fence(" + std::to_string(*token) + ", 'broker-a')");

  // The holder's renewal goes through at once (it only moves expires_at) ...
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(renewer->acquire_or_renew_lease("broker-a", 200, &err) == token);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));

  // ... while a takeover after the expiry waits until that commit has ended,
  // so nothing broker-a committed lands after broker-b took over.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::atomic<bool> returned{false};
  std::optional<int64_t> taken;
  std::thread takeover([&] {
    store_error e;
    taken = b->acquire_or_renew_lease("broker-b", 60000, &e);
    returned = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(!returned.load());
  run("COMMIT");
  takeover.join();
  PQfinish(c);
  REQUIRE(taken);
  CHECK(*taken == *token + 1);
  CHECK(!renewer->acquire_or_renew_lease("broker-a", 60000, &err));  // lost: another holder
}

TEST_CASE("a commit is a few set-based statements whatever its size (issue 22)", "[store][postgres][batch]") {
  auto& server = pg_server::get();
  auto s = open_ok(options(server.url(server.fresh_database())));
  store_error err;
  auto statements_of = [&](const batch& b) {
    const auto before = s->commit_stats();
    auto out = s->commit(b, err);
    INFO("commit: " << err.message);
    REQUIRE(out);
    const auto after = s->commit_stats();
    CHECK(after.commits == before.commits + 1);
    CHECK(after.total_ns > before.total_ns);
    return after.statements - before.statements;
  };
  batch accept;
  for (int i = 0; i < 300; ++i) accept.requests.push_back(request("r" + std::to_string(i), i + 1));
  CHECK(statements_of(accept) == 3);  // BEGIN, apply_requests, COMMIT

  batch mixed;
  for (int i = 0; i < 300; ++i) {
    mixed.requests.push_back(request("m" + std::to_string(i), 1000 + i));
    job_update u;
    u.id = "r" + std::to_string(i) + "#1";
    u.state = job_state::done;
    u.attempts = 1;
    u.seq = i + 1;
    u.node = "n";
    u.outcome = "ok";
    mixed.updates.push_back(u);
  }
  job_record child;
  child.id = "child#1";
  child.function = "sendPickupNotification";
  child.data_json = "{}";
  mixed.children = {child};
  // BEGIN, apply_requests, update_jobs, insert_attempts, insert_children,
  // move_finished, COMMIT
  CHECK(statements_of(mixed) == 7);
  CHECK(s->find_job("r299#1")->state == job_state::done);
  CHECK(s->find_job("m299#1"));

  // A repeated request id starts a second run: one more statement.
  batch repeat;
  repeat.requests.push_back(request("x", 5000));
  repeat.requests.push_back(request("y", 5001));
  repeat.requests.push_back(request("x", 5002));
  CHECK(statements_of(repeat) == 4);
}

TEST_CASE("a set-based statement that fails applies nothing of the batch and says why", "[store][postgres][batch]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  auto s = open_ok(options(server.url(db)));
  store_error err;
  REQUIRE(s->commit(one_request("first", 1), err));
  // A job state the table refuses: the UPDATE fails after apply_requests ran.
  server.sql(db, "ALTER TABLE klynaa.jobs ADD CONSTRAINT no_seven CHECK (state <> 7)");
  batch b;
  for (int i = 0; i < 20; ++i) b.requests.push_back(request("b" + std::to_string(i), 10 + i));
  job_update u;
  u.id = "first#1";
  u.state = static_cast<job_state>(7);
  b.updates.push_back(u);
  store_error failed;
  CHECK(!s->commit(b, failed));
  INFO(failed.message);
  CHECK(failed.message.find("no_seven") != std::string::npos);
  CHECK(!s->find_job("b0#1"));
  CHECK(s->find_job("first#1")->state == job_state::ready);
  // The connection is usable: the same requests commit once the cause is gone.
  b.updates.clear();
  auto out = s->commit(b, err);
  INFO(err.message);
  REQUIRE(out);
  CHECK(!out->requests.at(19).duplicate);
}

TEST_CASE("finished jobs leave klynaa.jobs for klynaa.jobs_done in the commit that ends them (issue 22)",
          "[store][postgres][batch]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  auto s = open_ok(options(server.url(db)));
  store_error err;
  batch accept;
  for (int i = 0; i < 10; ++i) accept.requests.push_back(request("r" + std::to_string(i), i + 1));
  REQUIRE(s->commit(accept, err));
  batch end;
  for (int i = 0; i < 6; ++i) {
    job_update u;
    u.id = "r" + std::to_string(i) + "#1";
    u.state = i < 4 ? job_state::done : (i == 4 ? job_state::dead : job_state::running);
    u.attempts = 1;
    u.seq = i + 1;
    u.result_json = R"({"ok":true})";
    u.node = "n";
    u.outcome = i < 4 ? "ok" : (i == 4 ? "dead" : "");
    end.updates.push_back(u);
  }
  REQUIRE(s->commit(end, err));
  // The hot table keeps the live jobs and the dead letter; the done ones moved.
  CHECK(server.sql(db, "SELECT count(*) FROM klynaa.jobs") == "6");
  // ... and autovacuum comes after a fixed number of dead rows, unthrottled.
  CHECK(server.sql(db, "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'klynaa.jobs'::regclass") ==
        "autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_threshold=20000,autovacuum_vacuum_cost_delay=0");
  CHECK(server.sql(db, "SELECT count(*) FROM klynaa.jobs_done WHERE state = 3") == "4");
  auto done = s->find_job("r0#1");
  REQUIRE(done);
  CHECK(done->state == job_state::done);
  CHECK(done->result_json == R"({"ok":true})");
  CHECK(s->list_jobs(job_state::done, 10).size() == 4);
  CHECK(s->list_jobs(job_state::dead, 10).size() == 1);
  CHECK(s->max_seq() == 10);
  // A done job's id is still taken: by a request's job, by a job's child.
  batch again;
  again.requests.push_back(request("other", 20));
  again.requests.back().jobs[0].id = "r1#1";
  job_record child;
  child.id = "r2#1";
  child.function = "sendPickupNotification";
  child.data_json = "{}";
  again.children = {child};
  auto out = s->commit(again, err);
  REQUIRE(out);
  CHECK(out->requests[0].created.empty());
  CHECK(out->children_inserted == std::vector<bool>{false});
  CHECK(s->find_job("r1#1")->seq == 2);
  // A duplicate of a request whose job is done sees it done.
  out = s->commit(one_request("r3", 30), err);
  REQUIRE(out);
  REQUIRE(out->requests[0].existing.size() == 1);
  CHECK(out->requests[0].existing[0].state == job_state::done);
}

TEST_CASE("a version 1 postgres store is upgraded in place: its done jobs stay, new ones move out",
          "[store][postgres]") {
  auto& server = pg_server::get();
  const std::string db = server.fresh_database();
  {
    auto s = open_ok(options(server.url(db)));
    store_error err;
    REQUIRE(s->commit(one_request("a", 1), err));
    REQUIRE(s->commit(one_request("b", 2), err));
  }
  // Version 1: no jobs_done, finished jobs in klynaa.jobs.
  server.sql(db, "DROP TABLE klynaa.jobs_done; UPDATE klynaa.meta SET value = '1' WHERE key = 'schema_version'; "
                 "UPDATE klynaa.jobs SET state = 3 WHERE id = 'a#1'");
  {
    store_error err;
    pg_options ro = options(server.url(db));
    ro.read_only = true;
    CHECK(!pg_store::open(ro, err));
    CHECK(err.message.find("schema version 1") != std::string::npos);
  }
  auto s = open_ok(options(server.url(db)));
  CHECK(server.sql(db, "SELECT value FROM klynaa.meta WHERE key = 'schema_version'") == "2");
  CHECK(server.sql(db, "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE oid = 'klynaa.jobs'::regclass")
            .find("autovacuum_vacuum_threshold=20000") != std::string::npos);
  CHECK(s->find_job("a#1")->state == job_state::done);
  batch end;
  job_update u;
  u.id = "b#1";
  u.state = job_state::done;
  u.attempts = 1;
  u.seq = 2;
  end.updates.push_back(u);
  store_error err;
  REQUIRE(s->commit(end, err));
  CHECK(server.sql(db, "SELECT count(*) FROM klynaa.jobs") == "1");  // a#1, until pruned
  CHECK(server.sql(db, "SELECT id FROM klynaa.jobs_done") == "b#1");
  CHECK(s->list_jobs(job_state::done, 10).size() == 2);
  CHECK(s->prune(wall_ms() + 1000) == 4);  // both jobs and both dedup keys
  CHECK(server.sql(db, "SELECT count(*) FROM klynaa.jobs") == "0");
}
