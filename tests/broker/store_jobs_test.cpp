// Tests of broker/store, the jobs: updates and their attempt history, recovery
// of unfinished jobs after a restart, listing and counting, pruning, and the
// dead-letter queue's replay and purge (docs/operations.md, "The dead-letter
// queue"), each over SQLite, PostgreSQL and the journal (store_fixture.hpp).
#include "broker/store.hpp"
#include "broker/pg_store.hpp"
#include "pg_server.hpp"
#include "store_fixture.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

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
using namespace store_fixture;
using klynaa::test::temp_dir;

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
  CHECK(nlohmann::json::parse(s->history_json("evt-1#1")).size() == 1);  // an unfinished job's history

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
  CHECK(j->last_error_json.empty());
  CHECK(j->updated_ms >= j->created_ms);
  if (at.backend == "journal") {
    // The journal keeps a done job compactly: no history, and a result only for
    // an invoke request's job (docs/design.md, "The journal store").
    CHECK(j->result_json.empty());
    CHECK(s->history_json("evt-1#1") == "[]");
  } else {
    CHECK(j->result_json == R"({"sent":1})");
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
  }
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
  // The journal keeps no history of a done job (docs/design.md, "The journal store").
  REQUIRE(nlohmann::json::parse(s->history_json("old-done#1")).size() == (at.backend == "journal" ? 0u : 1u));

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
