// Tests of broker/timers: the loop's periods, how long it sleeps, when a drain
// is over, and a schedule firing's write request. Pure: each test passes `now`.
#include "broker/timers.hpp"

#include <catch2/catch.hpp>

#include <climits>

#include "protocol/message.hpp"

using namespace klynaa;
using namespace klynaa::broker;

TEST_CASE("the poll waits 100 ms at most, less when a job or a schedule is due sooner, never negative", "[timers]") {
  CHECK(loop_timers::poll_timeout(1000, INT64_MAX, INT64_MAX) == 100);
  CHECK(loop_timers::poll_timeout(1000, 1030, INT64_MAX) == 30);
  CHECK(loop_timers::poll_timeout(1000, INT64_MAX, 1007) == 7);
  CHECK(loop_timers::poll_timeout(1000, 900, 1500) == 0);
  CHECK(loop_timers::poll_timeout(1000, 5000, 6000) == 100);
}

TEST_CASE("the loop ticks every 50 ms, and at once when a timer is due", "[timers]") {
  loop_timers t;
  CHECK(t.take_tick(1000, INT64_MAX, INT64_MAX));
  CHECK_FALSE(t.take_tick(1049, INT64_MAX, INT64_MAX));
  CHECK(t.take_tick(1050, INT64_MAX, INT64_MAX));
  CHECK(t.take_tick(1051, 1051, INT64_MAX));  // a job is due
  CHECK(t.take_tick(1052, INT64_MAX, 1000));  // a schedule is due
  CHECK_FALSE(t.take_tick(1053, 2000, 2000));
}

TEST_CASE("the disk, the stats and the history have periods of 1 s, 250 ms and 5 s", "[timers]") {
  loop_timers t;
  const int64_t t0 = 1700000000000;
  t.disk_checked(t0);
  t.stats_published(t0);
  CHECK(t.take_history(t0));
  CHECK_FALSE(t.take_disk_check(t0 + 999));
  CHECK(t.take_disk_check(t0 + 1000));
  CHECK_FALSE(t.take_disk_check(t0 + 1500));
  CHECK_FALSE(t.take_stats(t0 + 249));
  CHECK(t.take_stats(t0 + 250));
  CHECK_FALSE(t.take_stats(t0 + 251));
  CHECK_FALSE(t.take_history(t0 + 4999));
  CHECK(t.take_history(t0 + 5000));
}

TEST_CASE("running_jobs sums the running jobs of every function", "[timers]") {
  state_counts c;
  CHECK(running_jobs(c) == 0);
  c["a"][job_state::running] = 2;
  c["a"][job_state::ready] = 5;
  c["b"][job_state::running] = 3;
  c["c"][job_state::retry_wait] = 1;
  CHECK(running_jobs(c) == 5);
}

TEST_CASE("a drain ends when nothing runs, the grace is over or a second signal came, once the batch is stored",
          "[timers]") {
  // running, now, deadline, stopping, batch_empty, store_failing, writer_busy
  CHECK(drain_over(0, 10, 100, false, true, false, false));
  CHECK_FALSE(drain_over(2, 10, 100, false, true, false, false));  // jobs still run
  CHECK(drain_over(2, 100, 100, false, true, false, false));       // grace over
  CHECK(drain_over(2, 10, 100, true, true, false, false));         // stop now
  CHECK_FALSE(drain_over(0, 10, 100, false, false, false, false)); // the open batch is not stored
  CHECK_FALSE(drain_over(0, 10, 100, false, true, false, true));   // a commit is in flight
  // A store that cannot commit does not keep a stopping broker alive, only a draining one.
  CHECK(drain_over(0, 10, 100, true, false, true, false));
  CHECK_FALSE(drain_over(0, 10, 100, false, false, true, false));
}

TEST_CASE("a schedule firing becomes a publish with its deterministic id and one job", "[timers]") {
  firing f;
  f.request_id = "schedule:cleanup:2026-11-27T03:00:00Z";
  f.name = "cleanup";
  f.function = "cleanupData";
  f.data_json = R"({"older_than_days":90})";
  f.at_ms = 1800000000000;
  auto nr = firing_request(f, 1800000000500, 77);
  CHECK(nr.id == f.request_id);
  CHECK(nr.op == static_cast<int>(protocol::op::publish));
  CHECK(nr.type == "cleanupData");
  CHECK(nr.ts_ms == f.at_ms);
  CHECK(nr.accepted_ms == 1800000000500);
  REQUIRE(nr.jobs.size() == 1);
  const auto& j = nr.jobs[0];
  CHECK(j.id == "schedule:cleanup:2026-11-27T03:00:00Z#1");
  CHECK(j.request_id == f.request_id);
  CHECK(j.function == "cleanupData");
  CHECK(j.data_json == f.data_json);
  CHECK(j.ordering_key.empty());
  CHECK(j.seq == 77);
  CHECK(j.ts_ms == f.at_ms);
  CHECK(j.created_ms == 1800000000500);
  f.data_json = R"({"worker_id":3})";
  CHECK(firing_request(f, 0, 1).jobs[0].ordering_key == "worker:3");
}
