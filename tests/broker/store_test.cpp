// Tests of broker/store: dedup of request ids (docs/ingress-protocol.md, "The
// operations": `duplicate`), jobs created by jobs, and auto-release
// cancellation (docs/events-and-functions.md, "Events"), each over both
// implementations, SQLite and PostgreSQL (a real server of the test process's
// own, pg_server.hpp). Job updates, listing and pruning are in
// store_jobs_test.cpp, schema upgrades, errors and durability across a kill -9
// in store_durability_test.cpp. pg_store_test.cpp has what only PostgreSQL has
// (URLs, rights, lost connections, the lease).
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
