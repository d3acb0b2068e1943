// Tests of broker/store, one commit with many items (issue 22): a batch must
// leave the store as its items applied one after the other would, whatever a
// backend does with them — the PostgreSQL store sends each kind of item as one
// set-based statement (broker/pg_commit.cpp), cutting the requests into runs
// that cannot see each other. Dedup, pickups closed and job ids repeated within
// one batch, several changes of one job, jobs made by jobs, values that need
// quoting in an array, and what a restart finds. Each over SQLite, PostgreSQL
// and the journal (store_fixture.hpp).
#include "broker/store.hpp"
#include "store_fixture.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

using namespace klynaa::broker;
using namespace store_fixture;

namespace {

using ids = std::vector<std::string>;

}  // namespace

TEST_CASE("a batch's requests apply one after the other: duplicates, closed pickups and repeated job ids",
          "[store][batch]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  {
    auto s = at.open();
    batch before;
    before.requests.push_back(make_request("old", {make_job("old#1", 1)}, /*op=*/1));
    before.requests.push_back(delivered("del-3", 3, 2));  // del-3#2: a pending auto-release
    commit_ok(*s, before);

    batch b;
    b.requests.push_back(delivered("del-5", 5, 10));             // 0: del-5#1, del-5#2
    b.requests.push_back(closing("conf-5", 5, 12));              // 1: cancels del-5#2 of this batch
    b.requests.push_back(delivered("late-5", 5, 13));            // 2: no auto-release: 5 is closed
    b.requests.push_back(make_request("old", {make_job("old#1", 14)}));  // 3: duplicate of an earlier commit
    b.requests.push_back(closing("conf-3", 3, 15));              // 4: cancels del-3#2
    b.requests.push_back(make_request("rep-a", {make_job("shared#1", 16)}));  // 5
    b.requests.push_back(make_request("rep-b", {make_job("shared#1", 17), make_job("rep-b#2", 18)}));  // 6
    b.requests.push_back(make_request("del-5", {make_job("del-5#9", 19)}, 2));  // 7: duplicate of 0
    for (int i = 0; i < 50; ++i) {                               // 8..57
      auto id = "bulk-" + std::to_string(i);
      b.requests.push_back(make_request(id, {make_job(id + "#1", 100 + i)}));
    }
    auto out = commit_ok(*s, b);

    CHECK(out.requests[0].job_ids == ids{"del-5#1", "del-5#2"});
    CHECK(out.requests[0].created == std::vector<uint32_t>{0, 1});
    CHECK(out.requests[1].cancelled == ids{"del-5#2"});
    CHECK(out.requests[1].job_ids == ids{"conf-5#1"});
    CHECK(out.requests[2].job_ids == ids{"late-5#1"});
    CHECK(out.requests[2].created == std::vector<uint32_t>{0});
    CHECK(out.requests[3].duplicate);
    CHECK(out.requests[3].original_op == 1);
    CHECK(out.requests[3].job_ids == ids{"old#1"});
    REQUIRE(out.requests[3].existing.size() == 1);
    CHECK(out.requests[3].existing[0].seq == 1);
    CHECK(out.requests[4].cancelled == ids{"del-3#2"});
    CHECK(out.requests[5].job_ids == ids{"shared#1"});
    CHECK(!out.requests[6].duplicate);
    CHECK(out.requests[6].job_ids == ids{"rep-b#2"});
    CHECK(out.requests[6].created == std::vector<uint32_t>{1});
    auto& dup = out.requests[7];
    CHECK(dup.duplicate);
    CHECK(dup.original_op == 0);
    CHECK(dup.job_ids == ids{"del-5#1", "del-5#2"});
    REQUIRE(dup.existing.size() == 2);
    CHECK(dup.existing[0].id == "del-5#1");
    CHECK(dup.existing[1].state == job_state::cancelled);  // as request 1 of the batch left it
    for (size_t i = 8; i < b.requests.size(); ++i) {
      INFO(b.requests[i].id);
      CHECK(!out.requests[i].duplicate);
      CHECK(out.requests[i].job_ids == ids{b.requests[i].id + "#1"});
    }
    CHECK(s->find_job("shared#1")->seq == 16);
    CHECK(s->find_job("del-5#2")->state == job_state::cancelled);
    CHECK(!s->find_job("late-5#2"));
    CHECK(!s->find_job("del-5#9"));
  }
  // What a restart finds: the same jobs, in seq order.
  auto s = at.open();
  ids expected = {"old#1", "del-3#1", "del-5#1", "conf-5#1", "late-5#1", "conf-3#1", "shared#1", "rep-b#2"};
  for (int i = 0; i < 50; ++i) expected.push_back("bulk-" + std::to_string(i) + "#1");
  CHECK(ids_of(unfinished(*s)) == expected);
  CHECK(s->max_seq() == 149);
  CHECK(commit_one(*s, make_request("bulk-7", {})).duplicate);
  CHECK(commit_one(*s, make_request("conf-5", {})).duplicate);
}

TEST_CASE("several changes of one job in a batch leave the last, with each ended attempt in its history",
          "[store][batch]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch first;
  first.requests.push_back(make_request("a", {make_job("a#1", 1)}));
  first.requests.push_back(make_request("k", {make_job("k#1", 2, "processEscrowRelease", "pickup:9")}));
  commit_ok(*s, first);

  batch b;
  b.requests.push_back(make_request("n", {make_job("n#1", 3)}));
  b.updates.push_back(update("a#1", job_state::running, 1, 1));
  auto retry = update("a#1", job_state::retry_wait, 1, 1);
  retry.due_ms = 5000;
  retry.last_error_json = R"({"code":"transient","message":"HTTP 503"})";
  retry.node = "node-a";
  retry.outcome = "retry";
  b.updates.push_back(retry);
  b.updates.push_back(update("k#1", job_state::running, 1, 2));
  b.updates.push_back(update("a#1", job_state::running, 2, 4));  // resequenced
  auto ok = update("a#1", job_state::done, 2, 4);
  ok.result_json = R"({"sent":1})";
  ok.node = "node-b";
  ok.outcome = "ok";
  b.updates.push_back(ok);
  auto dead = update("k#1", job_state::dead, 1, 2);
  dead.last_error_json = R"({"code":"permanent","message":"HTTP 400"})";
  dead.node = "node-a";
  dead.outcome = "dead";
  b.updates.push_back(dead);
  b.updates.push_back(update("n#1", job_state::running, 1, 3));  // a job of this same batch
  commit_ok(*s, b);

  auto a = s->find_job("a#1");
  CHECK(a->state == job_state::done);
  CHECK(a->attempts == 2);
  CHECK(a->seq == 4);
  auto k = s->find_job("k#1");
  CHECK(k->state == job_state::dead);
  CHECK(k->last_error_json == dead.last_error_json);
  CHECK(s->find_job("n#1")->state == job_state::running);
  if (at.backend != "journal") {  // the journal keeps no history of a done job
    auto h = nlohmann::json::parse(s->history_json("a#1"));
    REQUIRE(h.size() == 2);
    CHECK(h[0]["outcome"] == "retry");
    CHECK(h[0]["node"] == "node-a");
    CHECK(h[1]["outcome"] == "ok");
    CHECK(h[1]["node"] == "node-b");
  }
  CHECK(nlohmann::json::parse(s->history_json("k#1")).size() == 1);
  CHECK(ids_of(unfinished(*s)) == ids{"n#1"});

  // The dead job goes back to ready from the dead-letter queue, then ends again
  // in a batch with two changes of it: the last one stays.
  batch replay;
  replay.replay_ids = {"k#1"};
  replay.replay_seq_base = 10;
  auto r = commit_ok(*s, replay);
  REQUIRE(r.replayed.size() == 1);
  CHECK(ids_of(unfinished(*s)) == ids{"n#1", "k#1"});
  batch again;
  again.updates.push_back(update("k#1", job_state::running, 2, 10));
  auto ok2 = update("k#1", job_state::done, 2, 10);
  ok2.node = "node-c";
  ok2.outcome = "ok";
  again.updates.push_back(ok2);
  commit_ok(*s, again);
  CHECK(s->find_job("k#1")->state == job_state::done);
  CHECK(ids_of(unfinished(*s)) == ids{"n#1"});
}

TEST_CASE("jobs made by jobs in one batch: a repeated id is stored once, the first time, and never over a request's job",
          "[store][batch]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  auto s = at.open();
  batch b;
  b.requests.push_back(make_request("r1", {make_job("x#1", 1)}));
  b.children.push_back(make_job("x#1", 2));  // the request of this batch stored it
  b.children.push_back(make_job("c#1", 3));
  b.children.push_back(make_job("c#1", 4));  // repeated: not stored
  b.children.push_back(make_job("c#2", 5));
  auto out = commit_ok(*s, b);
  CHECK(out.children_inserted == std::vector<bool>{false, true, false, true});
  CHECK(s->find_job("x#1")->seq == 1);
  CHECK(s->find_job("c#1")->seq == 3);
  CHECK(total_jobs(*s) == 3);

  batch later;
  later.children.push_back(make_job("c#2", 6));
  later.children.push_back(make_job("c#3", 7));
  CHECK(commit_ok(*s, later).children_inserted == std::vector<bool>{false, true});
  CHECK(ids_of(unfinished(*s)) == ids{"x#1", "c#1", "c#2", "c#3"});
}

TEST_CASE("a commit of 1,000 requests keeps every value as sent, however it must be quoted", "[store][batch]") {
  store_at at(KLYNAA_EACH_BACKEND);
  INFO("backend: " << at.backend);
  // Characters that mean something in an array literal, JSON or SQL.
  const std::vector<std::string> awkward = {
      R"({"a":"x\"y","b":"back\\slash"})", R"({"s":"{1,2}","n":null})", "NULL", "", "{}",
      R"({"t":"tab\t, comma, 'quote'"})", "{\"u\":\"caf\xc3\xa9 \xe2\x82\xac\"}"};
  batch b;
  for (int i = 0; i < 1000; ++i) {
    auto id = "q-" + std::to_string(i) + (i % 7 == 3 ? "\"quoted\\" : "");
    auto j1 = make_job(id + "#1", 2 * i + 1, "sendPickupNotification", "pickup:" + std::to_string(i % 13));
    j1.data_json = awkward[static_cast<size_t>(i) % awkward.size()];
    auto j2 = make_job(id + "#2", 2 * i + 2, "notifyNearbyWorkers", "");
    j2.due_ms = 1000 + i;
    j2.last_error_json = awkward[static_cast<size_t>(i + 1) % awkward.size()];
    b.requests.push_back(make_request(id, {j1, j2}, i % 3, "pickup.created"));
  }
  {
    auto s = at.open();
    auto out = commit_ok(*s, b);
    for (size_t i = 0; i < b.requests.size(); ++i) {
      INFO(b.requests[i].id);
      REQUIRE(!out.requests[i].duplicate);
      REQUIRE(out.requests[i].job_ids == ids{b.requests[i].jobs[0].id, b.requests[i].jobs[1].id});
    }
  }
  auto s = at.open();
  auto jobs = unfinished(*s);
  REQUIRE(jobs.size() == 2000);
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto& want = b.requests[i / 2].jobs[i % 2];
    INFO(want.id);
    CHECK(jobs[i].id == want.id);
    CHECK(jobs[i].request_id == want.request_id);
    CHECK(jobs[i].data_json == want.data_json);
    CHECK(jobs[i].ordering_key == want.ordering_key);
    CHECK(jobs[i].seq == want.seq);
    CHECK(jobs[i].due_ms == want.due_ms);
    CHECK(jobs[i].last_error_json == want.last_error_json);
  }
  // Sent again: every one a duplicate of the first, with its op and jobs.
  auto again = commit_ok(*s, b);
  for (size_t i = 0; i < b.requests.size(); ++i) {
    INFO(b.requests[i].id);
    CHECK(again.requests[i].duplicate);
    CHECK(again.requests[i].original_op == static_cast<int>(i % 3));
    CHECK(again.requests[i].existing.size() == 2);
  }
  CHECK(total_jobs(*s) == 2000);
}
