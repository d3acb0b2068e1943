// The gateway's timers on CAF's deterministic scheduler and clock
// (gateway_fixture.hpp): registration and its backoff, heartbeats at the
// broker's interval, lease renewals, a silent broker (docs/cluster-protocol.md,
// "Heartbeats", "Leases" and "Reconnecting after a broker restart"). Times are
// exact: the gateway's tick is min(heartbeat_ms, register_retry_ms) / 4
// (nodes/gateway.cpp), and a timer fires at most one tick late.
#include <algorithm>
#include <chrono>
#include <memory>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>

#include "gateway_fixture.hpp"
#include "runtime_support.hpp"

using namespace klynaa;
using namespace klynaa::node_test;  // cl = protocol::cluster, chrono literals

namespace {

/// A kind whose jobs succeed at once, on the scheduler (the test's thread).
nodes::actor_kind_spec quick_kind(std::string kind, std::vector<std::string> functions, int workers) {
  auto k = kind_of(std::move(kind), std::move(functions), workers, ok_handler);
  k.blocking = false;
  return k;
}

/// The gaps between consecutive times.
std::vector<int64_t> gaps(const std::vector<int64_t>& times) {
  std::vector<int64_t> out;
  for (size_t i = 1; i < times.size(); ++i)
    out.push_back(times[i] - times[i - 1]);
  return out;
}

}  // namespace

TEST_CASE("an unanswered node backs off: READY intervals double up to the ceiling, then stay there") {
  gateway_fixture f;
  f.auto_welcome = false;
  auto c = f.config({quick_kind("k", {"f"}, 1)});
  c.register_retry_ms = 100;
  c.register_retry_max_ms = 400;
  f.start(c);
  f.advance(2500ms);
  // READYs at 0, 100, 300, 700, 1100, ... ms: the wait doubles from 100 ms up to
  // 400 ms and stays there, for ever (it never gives up). The tick is 25 ms and
  // every due time falls on one.
  CHECK(f.times<cl::ready>() == std::vector<int64_t>{0, 100, 300, 700, 1100, 1500, 1900, 2300});
}

TEST_CASE("a node re-sends ready until the broker welcomes it") {
  gateway_fixture f;
  f.auto_welcome = false;
  f.start(f.config({quick_kind("k", {"f"}, 1)}));
  f.advance(300ms);
  REQUIRE(f.count<cl::ready>() == 3);  // 0, 100, 300 ms
  f.deliver(cl::welcome{50, 30000});
  f.advance(50ms);
  const auto readies = f.count<cl::ready>();
  CHECK(readies == 3);
  f.advance(300ms);
  CHECK(f.count<cl::ready>() == readies);
}

TEST_CASE("the node sends heartbeats at the interval the broker set in welcome") {
  gateway_fixture f;
  f.heartbeat_ms = 50;
  f.start(f.config({quick_kind("k", {"f"}, 1)}));
  REQUIRE(f.count<cl::ready>() == 1);  // welcomed at once
  const auto before = f.count<cl::heartbeat>();
  f.advance(600ms);
  const auto times = f.times<cl::heartbeat>();
  CHECK(times.size() - before >= 9);  // one per 50 ms, each at most one 12 ms tick late
  CHECK(times.size() - before <= 12);
  for (auto gap : gaps(times)) {
    CHECK(gap >= 50);
    CHECK(gap <= 50 + 12);
  }
  CHECK(f.count<cl::ready>() == 1);  // the broker's heartbeats kept the session alive
}

TEST_CASE("a node re-registers when the broker goes silent for three heartbeats") {
  gateway_fixture f;
  f.heartbeat_ms = 50;
  f.heartbeats = false;  // the broker answers READY, then says nothing
  f.start(f.config({quick_kind("k", {"f"}, 2)}));
  REQUIRE(f.count<cl::ready>() == 1);
  f.advance(300ms);
  REQUIRE(f.count<cl::ready>() >= 2);
  const auto second = f.times<cl::ready>()[1];
  CHECK(second > 3 * 50);       // not before three heartbeats went missing
  CHECK(second <= 3 * 50 + 12);  // and at the next tick after that
  CHECK(f.all<cl::ready>()[1].credit == 2);
  // The broker comes back: with its heartbeats the session stays up.
  f.heartbeats = true;
  f.advance(50ms);
  const auto readies = f.count<cl::ready>();
  f.advance(400ms);
  CHECK(f.count<cl::ready>() == readies);
  f.deliver(job_of("j1", "f", 1));
  REQUIRE(f.done_of("j1") != nullptr);
  CHECK(f.done_of("j1")->outcome == "ok");
}

TEST_CASE("a node lists the leases of the jobs it holds, running or queued, in heartbeats every lease_ms / 3") {
  gateway_fixture f;
  f.lease_ms = 300;        // the node must renew at least every 100 ms
  f.heartbeat_ms = 10000;  // so only the renewals send heartbeats
  f.heartbeats = false;
  auto parked = std::make_shared<parked_jobs>();
  f.start(f.config({parking_kind(parked, 1)}));  // one job runs (waits), the other is queued
  f.deliver(job_of("held-1", "f", 41));
  f.deliver(job_of("held-2", "f", 42));
  REQUIRE(parked->waiting() == 1);
  const auto start = f.now_ms();
  f.advance(600ms);
  std::vector<int64_t> renewed;  // when a heartbeat listed the leases
  for (const auto& s : f.sent)
    if (auto* h = std::get_if<cl::heartbeat>(&s.msg); h != nullptr && !h->leases.empty()) {
      auto leases = h->leases;
      std::sort(leases.begin(), leases.end());
      CHECK(leases == std::vector<int64_t>{41, 42});
      renewed.push_back(s.at_ms);
    }
  // Every lease_ms / 3 = 100 ms, at most one 25 ms tick late: 5 or 6 in 600 ms.
  CHECK(renewed.size() >= 5);
  CHECK(renewed.size() <= 6);
  REQUIRE_FALSE(renewed.empty());
  CHECK(renewed.front() - start <= 100 + 25);
  for (auto gap : gaps(renewed)) {
    CHECK(gap >= 100);
    CHECK(gap <= 100 + 25);
  }
  parked->wake_all();  // held-1 ends; held-2 starts and waits
  f.run_due();
  REQUIRE(parked->waiting() == 1);
  parked->wake_all();
  f.run_due();
  REQUIRE(f.count<cl::done>() == 2);
  // Nothing held: no more leases listed.
  const auto listed = renewed.size();
  f.advance(400ms);
  size_t now_listed = 0;
  for (const auto& h : f.all<cl::heartbeat>())
    if (!h.leases.empty()) ++now_listed;
  CHECK(now_listed == listed);
}
