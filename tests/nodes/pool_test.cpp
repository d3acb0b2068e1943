// A pool's supervision on CAF's deterministic scheduler and clock
// (gateway_fixture.hpp): restarts after a backoff, and the restart window that
// turns too many of them into withdrawing the kind (nodes/pool.hpp;
// docs/reliability.md, "Supervision in the nodes"), and the time limit of a job
// on a fiber ("Jobs on fibers"). The pool's tick is 100 ms.
#include <chrono>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "gateway_fixture.hpp"
#include "runtime_support.hpp"

using namespace klynaa;
using namespace klynaa::node_test;  // cl = protocol::cluster, chrono literals

namespace {

/// A kind whose every job throws (its worker dies), on the scheduler.
nodes::actor_kind_spec crashing_kind(int64_t max_restarts, int64_t window_ms) {
  auto k = kind_of("k", {"f"}, 1, [](const nodes::job&) -> nodes::job_result {
    throw std::runtime_error("poison");
  });
  k.blocking = false;
  k.limits.max_restarts = max_restarts;
  k.limits.restart_window_ms = window_ms;
  k.limits.restart_backoff_ms = 10;
  return k;
}

nodes::actor_kind_spec quick_kind(std::string kind, std::vector<std::string> functions) {
  auto k = kind_of(std::move(kind), std::move(functions), 1, ok_handler);
  k.blocking = false;
  return k;
}

}  // namespace

TEST_CASE("more restarts than max_restarts within the window withdraw the kind, and other kinds go on") {
  gateway_fixture f;
  f.start(f.config({crashing_kind(2, 60000), quick_kind("ok", {"g"})}));
  for (int i = 1; i <= 3; ++i) {
    f.deliver(job_of("p" + std::to_string(i), "f", i));
    REQUIRE(f.done_of("p" + std::to_string(i)) != nullptr);
    CHECK(f.done_of("p" + std::to_string(i))->outcome == "transient");
    f.advance(200ms);  // the restart: a 10 ms backoff, at the pool's next tick
  }
  // The third death is one restart too many: the node withdraws "k".
  REQUIRE(f.count<cl::withdraw>() == 1);
  auto w = f.all<cl::withdraw>().front();
  CHECK(w.kinds == std::vector<std::string>{"k"});
  CHECK(w.credit == 1);
  CHECK(w.reason.find("node.max_restarts") != std::string::npos);
  // A job of the withdrawn kind the broker still sends comes straight back.
  f.deliver(job_of("late", "f", 10));
  REQUIRE(f.count<cl::withdraw>() == 2);
  CHECK(f.all<cl::withdraw>()[1].jobs == std::vector<std::string>{"late"});
  CHECK(f.done_of("late") == nullptr);
  // The other kind works on.
  f.deliver(job_of("g1", "g", 11));
  REQUIRE(f.done_of("g1") != nullptr);
  CHECK(f.done_of("g1")->outcome == "ok");
}

TEST_CASE("restarts spread wider than the restart window never withdraw the kind") {
  gateway_fixture f;
  f.start(f.config({crashing_kind(2, 1000)}));
  for (int i = 1; i <= 6; ++i) {
    f.deliver(job_of("p" + std::to_string(i), "f", i));
    REQUIRE(f.done_of("p" + std::to_string(i)) != nullptr);
    f.advance(600ms);  // at most two deaths within any 1 s
  }
  CHECK(f.count<cl::withdraw>() == 0);
}

TEST_CASE("a fiber job past its time limit has its wait cancelled, fails as timeout once, and its slot serves the next job") {
  gateway_fixture f;
  auto parked = std::make_shared<parked_jobs>();
  auto kind = parking_kind(parked, 1);
  kind.limits.job_timeout_ms = 300;
  f.start(f.config({kind}));
  f.deliver(job_of("stuck", "f", 1));
  REQUIRE(parked->waiting() == 1);
  f.advance(300ms);
  CHECK(f.done_of("stuck") == nullptr);  // not before its limit
  f.advance(100ms);                     // the pool's next tick
  REQUIRE(f.done_of("stuck") != nullptr);
  CHECK(f.done_of("stuck")->error_code == "timeout");
  CHECK(parked->cancelled.load() == 1);  // its wait was cancelled
  {
    std::lock_guard<std::mutex> lock{parked->m};
    parked->wakes.clear();  // the stuck job's, called by the cancel already
  }
  f.deliver(job_of("next", "f", 2));
  REQUIRE(parked->waiting() == 1);
  parked->wake_all();
  f.run_due();
  REQUIRE(f.done_of("next") != nullptr);
  CHECK(f.done_of("next")->outcome == "ok");
  f.advance(200ms);
  int stuck = 0;
  for (const auto& d : f.all<cl::done>())
    if (d.job_id == "stuck") ++stuck;
  CHECK(stuck == 1);  // the late end of the abandoned job is dropped
}
