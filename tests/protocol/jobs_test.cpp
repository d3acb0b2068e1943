// Job derivation of docs/events-and-functions.md: the jobs of every event and function, their ids,
// data, ordering keys, due times, and the pickups that confirmations close.
#include <catch2/catch.hpp>

#include "frames.hpp"
#include "protocol/jobs.hpp"
#include "protocol/validate.hpp"

using namespace klynaa::protocol;
using namespace klynaa::protocol::test;

namespace {

constexpr int64_t hold_ms = 86400000;
constexpr int64_t event_ts = 1700000000000;

// Decodes the request first, so derivation sees what the broker sees.
request accepted_request(json j) {
  j["ts"] = event_ts;
  const auto d = decode(j);
  if (d.error) FAIL(d.error->field << ": " << d.error->message);
  REQUIRE(d.req);
  return *d.req;
}

derivation derive(const json& j) { return derive_jobs(accepted_request(j), hold_ms); }

}  // namespace

TEST_CASE("pickup.created creates one notifyNearbyWorkers job with the pickup's place") {
  const auto d = derive(publish("pickup.created", {{"pickup_id", 7}, {"customer_id", 3},
                                                   {"lat", 5.6}, {"lng", -0.2},
                                                   {"waste_type", "plastic"}}));
  REQUIRE(d.jobs.size() == 1);
  const auto& j = d.jobs[0];
  CHECK(j.id == "evt-1#1");
  CHECK(j.function == "notifyNearbyWorkers");
  CHECK(j.data == json{{"pickup_id", 7}, {"lat", 5.6}, {"lng", -0.2}});
  CHECK(j.ordering_key == "pickup:7");
  CHECK(j.due_ms == 0);
  CHECK_FALSE(j.auto_release);
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("pickup.created passes radius_km on when given") {
  const auto d = derive(publish("pickup.created", {{"pickup_id", 7}, {"customer_id", 3},
                                                   {"lat", 5}, {"lng", 6}, {"radius_km", 2.5}}));
  REQUIRE(d.jobs.size() == 1);
  CHECK(d.jobs[0].data == json{{"pickup_id", 7}, {"lat", 5}, {"lng", 6}, {"radius_km", 2.5}});
}

TEST_CASE("pickup.accepted notifies the customer with pickup_accepted") {
  const auto d = derive(publish("pickup.accepted", {{"pickup_id", 7}, {"customer_id", 3},
                                                    {"worker_id", 9}}));
  REQUIRE(d.jobs.size() == 1);
  const auto& j = d.jobs[0];
  CHECK(j.id == "evt-1#1");
  CHECK(j.function == "sendPickupNotification");
  CHECK(j.data == json{{"pickup_id", 7}, {"notification_type", "pickup_accepted"},
                       {"user_type", "customer"}, {"user_id", 3}});
  CHECK(j.ordering_key == "pickup:7");
  CHECK(j.due_ms == 0);
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("pickup.delivered notifies the customer now and schedules the auto-release after the hold") {
  const auto d = derive(publish("pickup.delivered", {{"pickup_id", 7}, {"customer_id", 3},
                                                     {"worker_id", 9}}));
  REQUIRE(d.jobs.size() == 2);
  const auto& note = d.jobs[0];
  CHECK(note.id == "evt-1#1");
  CHECK(note.function == "sendPickupNotification");
  CHECK(note.data == json{{"pickup_id", 7}, {"notification_type", "pickup_delivered"},
                          {"user_type", "customer"}, {"user_id", 3}});
  CHECK(note.ordering_key == "pickup:7");
  CHECK(note.due_ms == 0);
  CHECK_FALSE(note.auto_release);

  const auto& release = d.jobs[1];
  CHECK(release.id == "evt-1#2");
  CHECK(release.function == "processEscrowRelease");
  CHECK(release.data == json{{"pickup_id", 7}, {"release_reason", "auto_release"}});
  CHECK(release.ordering_key == "pickup:7");
  CHECK(release.due_ms == event_ts + hold_ms);
  CHECK(release.auto_release);
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("the auto-release is due the configured hold after the event's ts, not after now") {
  auto r = accepted_request(publish("pickup.delivered", {{"pickup_id", 7}, {"customer_id", 3},
                                                         {"worker_id", 9}}));
  r.ts_ms = 1000;
  const auto d = derive_jobs(r, 5000);
  REQUIRE(d.jobs.size() == 2);
  CHECK(d.jobs[1].due_ms == 6000);
}

TEST_CASE("a pickup.delivered without ts is due the hold after the time received") {
  const auto dec = decode(publish("pickup.delivered", {{"pickup_id", 7}, {"customer_id", 3},
                                                       {"worker_id", 9}}));
  REQUIRE(dec.req);
  const auto d = derive_jobs(*dec.req, hold_ms);
  CHECK(d.jobs[1].due_ms == test_now_ms + hold_ms);
}

TEST_CASE("pickup.confirmed releases the escrow now and closes the pickup") {
  const auto d = derive(publish("pickup.confirmed", {{"pickup_id", 7}, {"customer_id", 3}}));
  REQUIRE(d.jobs.size() == 1);
  const auto& j = d.jobs[0];
  CHECK(j.id == "evt-1#1");
  CHECK(j.function == "processEscrowRelease");
  CHECK(j.data == json{{"pickup_id", 7}, {"release_reason", "customer_confirmed"}});
  CHECK(j.ordering_key == "pickup:7");
  CHECK(j.due_ms == 0);
  CHECK_FALSE(j.auto_release);
  REQUIRE(d.closes_pickup);
  CHECK(*d.closes_pickup == 7);
}

TEST_CASE("pickup.disputed notifies the admins with the reason and closes the pickup") {
  const auto d = derive(publish("pickup.disputed", {{"pickup_id", 7}, {"reason", "bag torn"}}));
  REQUIRE(d.jobs.size() == 1);
  const auto& j = d.jobs[0];
  CHECK(j.id == "evt-1#1");
  CHECK(j.function == "sendPickupNotification");
  CHECK(j.data == json{{"pickup_id", 7}, {"notification_type", "pickup_disputed"},
                       {"user_type", "admin"}, {"reason", "bag torn"}});
  CHECK(j.ordering_key == "pickup:7");
  REQUIRE(d.closes_pickup);
  CHECK(*d.closes_pickup == 7);
}

TEST_CASE("pickup.disputed without a reason sends none") {
  const auto d = derive(publish("pickup.disputed", {{"pickup_id", 8}}));
  REQUIRE(d.jobs.size() == 1);
  CHECK(d.jobs[0].data == json{{"pickup_id", 8}, {"notification_type", "pickup_disputed"},
                               {"user_type", "admin"}});
  CHECK(*d.closes_pickup == 8);
}

TEST_CASE("worker.location creates one updateWorkerLocation job ordered by worker") {
  const auto d = derive(publish("worker.location", {{"worker_id", 3}, {"lat", 1.5}, {"lng", 2.5},
                                                    {"available", false}, {"speed", 4}}));
  REQUIRE(d.jobs.size() == 1);
  const auto& j = d.jobs[0];
  CHECK(j.id == "evt-1#1");
  CHECK(j.function == "updateWorkerLocation");
  CHECK(j.data == json{{"worker_id", 3}, {"lat", 1.5}, {"lng", 2.5}, {"available", false}});
  CHECK(j.ordering_key == "worker:3");
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("every event creates the jobs its schema entry lists, numbered from 1") {
  const std::map<std::string, json> samples = {
      {"pickup.created", {{"pickup_id", 1}, {"customer_id", 2}, {"lat", 0}, {"lng", 0}}},
      {"pickup.accepted", {{"pickup_id", 1}, {"customer_id", 2}, {"worker_id", 3}}},
      {"pickup.delivered", {{"pickup_id", 1}, {"customer_id", 2}, {"worker_id", 3}}},
      {"pickup.confirmed", {{"pickup_id", 1}, {"customer_id", 2}}},
      {"pickup.disputed", {{"pickup_id", 1}}},
      {"worker.location", {{"worker_id", 3}, {"lat", 0}, {"lng", 0}, {"available", true}}},
  };
  for (const auto& e : events()) {
    INFO(e.name);
    auto j = publish(std::string{e.name}, samples.at(std::string{e.name}));
    j["id"] = "E-" + std::string{e.name};
    const auto d = derive(j);
    REQUIRE(d.jobs.size() == e.jobs.size());
    for (size_t i = 0; i < d.jobs.size(); ++i) {
      CHECK(d.jobs[i].id == "E-" + std::string{e.name} + "#" + std::to_string(i + 1));
      CHECK(d.jobs[i].function == e.jobs[i]);
      // The derived data is valid data for its function.
      CHECK_FALSE(validate_data(d.jobs[i].function, d.jobs[i].data));
    }
  }
}

TEST_CASE("an invoke creates one job of its function with the request's data") {
  const auto d = derive(invoke("notifyNearbyWorkers", {{"pickup_id", 4}, {"lat", 1}, {"lng", 2},
                                                       {"extra", "kept"}}));
  REQUIRE(d.jobs.size() == 1);
  CHECK(d.jobs[0].id == "call-1#1");
  CHECK(d.jobs[0].function == "notifyNearbyWorkers");
  CHECK(d.jobs[0].data == json{{"pickup_id", 4}, {"lat", 1}, {"lng", 2}, {"extra", "kept"}});
  CHECK(d.jobs[0].ordering_key == "pickup:4");
  CHECK(d.jobs[0].due_ms == 0);
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("a published function name creates one job like an invoke") {
  const auto d = derive(publish("generateDailyReport", {{"date", "2024-05-01"}}));
  REQUIRE(d.jobs.size() == 1);
  CHECK(d.jobs[0].id == "evt-1#1");
  CHECK(d.jobs[0].function == "generateDailyReport");
  CHECK(d.jobs[0].data == json{{"date", "2024-05-01"}});
  CHECK(d.jobs[0].ordering_key.empty());
}

TEST_CASE("an invoked processEscrowRelease does not close the pickup or count as an auto-release") {
  const auto d = derive(invoke("processEscrowRelease", {{"pickup_id", 4}, {"release_reason", "auto_release"}}));
  REQUIRE(d.jobs.size() == 1);
  CHECK_FALSE(d.jobs[0].auto_release);
  CHECK(d.jobs[0].due_ms == 0);
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("a ping creates no jobs") {
  request r;
  r.operation = op::ping;
  const auto d = derive_jobs(r, hold_ms);
  CHECK(d.jobs.empty());
  CHECK_FALSE(d.closes_pickup);
}

TEST_CASE("derivation is deterministic, so a duplicate derives the same job ids") {
  const auto j = publish("pickup.delivered", {{"pickup_id", 7}, {"customer_id", 3}, {"worker_id", 9}});
  const auto a = derive(j);
  const auto b = derive(j);
  REQUIRE(a.jobs.size() == b.jobs.size());
  for (size_t i = 0; i < a.jobs.size(); ++i) {
    CHECK(a.jobs[i].id == b.jobs[i].id);
    CHECK(a.jobs[i].data == b.jobs[i].data);
    CHECK(a.jobs[i].due_ms == b.jobs[i].due_ms);
  }
}

TEST_CASE("ordering keys prefer pickup_id, then worker_id, else none") {
  CHECK(ordering_key_of(json{{"pickup_id", 7}, {"worker_id", 3}}) == "pickup:7");
  CHECK(ordering_key_of(json{{"worker_id", 3}}) == "worker:3");
  CHECK(ordering_key_of(json{{"report_id", 3}, {"user_id", 4}}).empty());
  CHECK(ordering_key_of(json::object()).empty());
  CHECK(ordering_key_of(json{{"pickup_id", "7"}}).empty());
  CHECK(ordering_key_of(json{{"pickup_id", 7.0}, {"worker_id", 2}}) == "worker:2");
  CHECK(ordering_key_of(json::array({1})).empty());
  CHECK(ordering_key_of(json{{"pickup_id", 123456789012345ULL}}) == "pickup:123456789012345");
}

TEST_CASE("a daily_report notification has no ordering key") {
  const auto d = derive(invoke("sendPickupNotification", {{"report_id", 5},
                                                          {"notification_type", "daily_report"},
                                                          {"user_type", "admin"}}));
  REQUIRE(d.jobs.size() == 1);
  CHECK(d.jobs[0].ordering_key.empty());
}

TEST_CASE("child and per-pickup job ids follow docs/events-and-functions.md") {
  CHECK(child_job_id("evt-1", 1) == "evt-1#1");
  CHECK(child_job_id("evt-1#2", 3) == "evt-1#2#3");
  CHECK(pickup_job_id("escrow-released", 7) == "#escrow-released-7");
  CHECK(pickup_job_id("x", 0) == "#x-0");
}

TEST_CASE("once-per-key job ids are #name-key, and child ids count past 2^31") {
  CHECK(once_job_id("daily-report", "2024-01-31") == "#daily-report-2024-01-31");
  CHECK(once_job_id("escrow-released", "7") == pickup_job_id("escrow-released", 7));
  CHECK(pickup_job_id("escrow-released", 9007199254740993) == "#escrow-released-9007199254740993");
  CHECK(child_job_id("evt-1", int64_t{1} << 32) == "evt-1#4294967296");
}

TEST_CASE("only updateWorkerLocation fans out") {
  CHECK(is_fanout("updateWorkerLocation"));
  for (auto f : {"sendPickupNotification", "processEscrowRelease", "notifyNearbyWorkers", "cleanupData", "nothing", ""})
    CHECK_FALSE(is_fanout(f));
}
