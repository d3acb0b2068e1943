// The node runtime against a fake broker (fake_broker.hpp): registration and its
// backoff, heartbeats and their leases, re-registration, several broker endpoints.
// Spec: docs/cluster-protocol.md. Every wait has a deadline. Shared helpers:
// runtime_support.hpp.
#include "nodes/runtime.hpp"
#include "nodes/suspend.hpp"

#include <atomic>
#include <condition_variable>
#include <future>
#include <algorithm>
#include <mutex>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <catch2/catch.hpp>

#include "fake_broker.hpp"
#include "runtime_support.hpp"
#include "protocol/log.hpp"

using namespace klynaa;
using namespace klynaa::node_test;  // fake_broker, cl = protocol::cluster, chrono literals

TEST_CASE("an unanswered node backs off: READY intervals double up to the ceiling, then stay there") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.auto_welcome = false;
  auto o = options_for(broker, {kind_of("k", {"f"}, 1, ok_handler)});
  o.register_retry_ms = 100;
  o.register_retry_max_ms = 400;
  nodes::node_runtime node{ctx, o};
  node.start();
  // READYs at about 0, 100, 300, 700, 1100, 1500 ms: 6 in 1.6 s (a fixed 100 ms
  // interval would send 16; no backoff ceiling: 5 with ever longer gaps).
  broker.pump_for(1650ms);
  auto n = broker.count<cl::ready>();
  CHECK(n >= 5);
  CHECK(n <= 8);
  // At the ceiling it keeps trying (never gives up): another two in 800 ms.
  broker.pump_for(850ms);
  CHECK(broker.count<cl::ready>() >= n + 1);
  CHECK(broker.count<cl::ready>() <= n + 3);
  node.stop();
}

TEST_CASE("a node registers with its kinds and the sum of its workers as credit") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("notifier", {"sendPushNotification"}, 2, ok_handler),
                                                     kind_of("escrow", {"processEscrowRelease"}, 3, ok_handler)})};
  node.start();
  await_registration(broker);
  auto r = broker.all<cl::ready>().front();
  CHECK(r.node == "node-t");
  CHECK(r.kinds == std::vector<std::string>{"notifier", "escrow"});
  CHECK(r.credit == 5);
  node.stop();
}

TEST_CASE("a node re-sends ready until the broker welcomes it") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.auto_welcome = false;
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, ok_handler)})};
  node.start();
  CHECK(broker.wait_until([&] { return broker.count<cl::ready>() >= 3; }, 5s));
  broker.auto_welcome = true;
  broker.send(cl::welcome{50, 30000});
  broker.pump_for(50ms);  // a READY already under way does not count
  auto readies = broker.count<cl::ready>();
  broker.pump_for(300ms);
  CHECK(broker.count<cl::ready>() == readies);
  node.stop();
}

TEST_CASE("the node sends heartbeats at the interval the broker set in welcome") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.heartbeat_ms = 50;
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, ok_handler)})};
  node.start();
  await_registration(broker);
  auto before = broker.count<cl::heartbeat>();
  broker.pump_for(600ms);
  auto sent = broker.count<cl::heartbeat>() - before;
  CHECK(sent >= 5);    // about 10 expected; loose for loaded CI machines
  CHECK(sent <= 14);
  CHECK(broker.count<cl::ready>() == 1);  // our heartbeats kept the session alive
  node.stop();
}

TEST_CASE("a node lists the leases of the jobs it holds, running or queued, in heartbeats every lease_ms / 3") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.lease_ms = 300;        // the node must renew at least every 100 ms
  broker.heartbeat_ms = 10000;  // so only the renewals send heartbeats
  auto g = std::make_shared<gate>();
  auto kind = kind_of("k", {"f"}, 1, [g](const nodes::job& j) {
    g->wait(10s);
    return ok_handler(j);
  });
  kind.prefetch = 1;  // a second job waits in the node
  nodes::node_runtime node{ctx, options_for(broker, {kind})};
  node.start();
  await_registration(broker);
  broker.send(job_of("held-1", "f", 41));
  broker.send(job_of("held-2", "f", 42));
  REQUIRE(eventually([&] { return g->entered.load(); }, 5s));
  const auto before = broker.count<cl::heartbeat>();
  broker.pump_for(600ms);
  std::vector<cl::heartbeat> renewals;
  for (const auto& h : broker.all<cl::heartbeat>())
    if (!h.leases.empty()) renewals.push_back(h);
  CHECK(broker.count<cl::heartbeat>() - before >= 4);  // ~6 expected, loose for loaded machines
  REQUIRE_FALSE(renewals.empty());
  auto leases = renewals.back().leases;
  std::sort(leases.begin(), leases.end());
  CHECK(leases == std::vector<int64_t>{41, 42});
  g->release();
  REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == 2; }, 10s));
  // nothing held: no more leases listed
  const auto listed = renewals.size();
  broker.pump_for(400ms);
  size_t now_listed = 0;
  for (const auto& h : broker.all<cl::heartbeat>())
    if (!h.leases.empty()) ++now_listed;
  CHECK(now_listed <= listed + 1);
  node.stop();
}

TEST_CASE("a node re-registers when the broker goes silent for three heartbeats") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.heartbeat_ms = 50;
  broker.heartbeats = false;  // the broker answers READY, then says nothing
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 2, ok_handler)})};
  node.start();
  await_registration(broker);
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(broker.wait_until([&] { return broker.count<cl::ready>() >= 2; }, 5s));
  CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);  // not before ~3 heartbeats
  CHECK(broker.all<cl::ready>()[1].credit == 2);
  // The broker comes back: with its heartbeats the session stays up.
  broker.heartbeats = true;
  broker.pump_for(50ms);
  auto readies = broker.count<cl::ready>();
  broker.pump_for(400ms);
  CHECK(broker.count<cl::ready>() == readies);
  broker.send(job_of("j1", "f", 1));
  CHECK(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
  node.stop();
}

TEST_CASE("a node re-registers with a broker restarted on the same tcp endpoint") {
  zmq::context_t ctx;
  auto first = std::make_unique<fake_broker>(ctx, "tcp://127.0.0.1:*");
  auto endpoint = first->endpoint();
  first->heartbeat_ms = 50;
  auto opts = options_for(*first, {kind_of("k", {"f"}, 1, ok_handler)});
  nodes::node_runtime node{ctx, opts};
  node.start();
  await_registration(*first);
  first.reset();  // the broker dies
  std::this_thread::sleep_for(300ms);
  fake_broker second{ctx, endpoint};
  second.heartbeat_ms = 50;
  REQUIRE(second.wait_until([&] { return second.count<cl::ready>() >= 1; }, 10s));
  second.pump_for(50ms);
  second.send(job_of("j1", "f", 7));
  REQUIRE(second.wait_until([&] { return has_done(second, "j1"); }, 5s));
  CHECK(done_of(second, "j1")->lease == 7);
  node.stop();
}

TEST_CASE("a node registers again right after the broker says bye") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.heartbeat_ms = 1000;  // silence detection stays out of this test
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, ok_handler)})};
  node.start();
  await_registration(broker);
  broker.send(cl::bye{});
  CHECK(broker.wait_until([&] { return broker.count<cl::ready>() >= 2; }, 1s));
  node.stop();
}

// Several brokers (standby brokers on PostgreSQL, docs/deployment.md): the node
// is given every broker's cluster endpoint and registers with the active one.

/// Pumps both fake brokers until `pred` holds or `timeout` passes.
bool pump_both(fake_broker& a, fake_broker& b, const std::function<bool()>& pred,
               std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    a.pump_once(5ms);
    b.pump_once(5ms);
  }
  return true;
}

TEST_CASE("with several broker endpoints a node passes over a standby and registers with the active one") {
  zmq::context_t ctx;
  fake_broker standby{ctx, unique_inproc()};
  standby.standby = true;
  standby.heartbeats = false;
  fake_broker active{ctx, unique_inproc()};
  auto opts = options_for(active, {kind_of("k", {"f"}, 1, ok_handler)});
  opts.broker_endpoint = standby.endpoint() + ", " + active.endpoint();
  nodes::node_runtime node{ctx, opts};
  node.start();
  REQUIRE(pump_both(standby, active, [&] { return active.count<cl::ready>() >= 1; }, 5s));
  CHECK(standby.count<cl::ready>() == 1);  // told "standby" once, and never asked again
  active.send(job_of("j1", "f", 3));
  CHECK(pump_both(standby, active, [&] { return has_done(active, "j1"); }, 5s));
  pump_both(standby, active, [] { return false; }, 300ms);
  CHECK(standby.count<cl::ready>() == 1);
  CHECK(active.count<cl::ready>() == 1);
  node.stop();
}

TEST_CASE("with several broker endpoints a node moves on when the first one does not answer") {
  zmq::context_t ctx;
  std::string nobody;
  {
    fake_broker gone{ctx, "tcp://127.0.0.1:*"};
    nobody = gone.endpoint();  // a port nobody listens on once it is closed
  }
  fake_broker active{ctx, "tcp://127.0.0.1:*"};
  auto opts = options_for(active, {kind_of("k", {"f"}, 1, ok_handler)});
  opts.broker_endpoint = nobody + "," + active.endpoint();
  nodes::node_runtime node{ctx, opts};
  node.start();
  REQUIRE(active.wait_until([&] { return active.count<cl::ready>() >= 1; }, 5s));
  active.pump_for(20ms);
  active.send(job_of("j1", "f", 4));
  CHECK(active.wait_until([&] { return has_done(active, "j1"); }, 5s));
  node.stop();
}

TEST_CASE("a node whose broker falls silent registers with the next endpoint, where its jobs then run") {
  zmq::context_t ctx;
  fake_broker first{ctx, unique_inproc()};
  first.heartbeat_ms = 50;
  fake_broker second{ctx, unique_inproc()};
  second.heartbeat_ms = 50;
  auto opts = options_for(first, {kind_of("k", {"f"}, 1, ok_handler)});
  opts.broker_endpoint = first.endpoint() + "," + second.endpoint();
  nodes::node_runtime node{ctx, opts};
  node.start();
  REQUIRE(pump_both(first, second, [&] { return first.count<cl::ready>() >= 1; }, 5s));
  CHECK(second.count<cl::ready>() == 0);
  first.heartbeats = false;  // the active broker stops (a SIGSTOP, a dead machine)
  REQUIRE(pump_both(first, second, [&] { return second.count<cl::ready>() >= 1; }, 5s));
  second.send(job_of("j1", "f", 9));
  CHECK(pump_both(first, second, [&] { return has_done(second, "j1"); }, 5s));
  CHECK(!has_done(first, "j1"));
  node.stop();
}
