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
