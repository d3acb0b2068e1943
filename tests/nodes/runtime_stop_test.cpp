// The node runtime against a fake broker (fake_broker.hpp): stop(): in-flight jobs
// finish within the grace, stuck ones are handed back in BYE, stop is idempotent.
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

TEST_CASE("stop finishes an in-flight job within the grace and then says bye") {
  for (bool broker_batches : {false, true}) {  // with batches the DONE waits in the gateway's outbox
    DYNAMIC_SECTION("broker takes batches: " << broker_batches) {
      zmq::context_t ctx;
      fake_broker broker{ctx, unique_inproc()};
      broker.batch = broker_batches;
      auto started = std::make_shared<std::atomic<bool>>(false);
      auto handler = [started](const nodes::job& j) {
        *started = true;
        std::this_thread::sleep_for(300ms);
        return ok_handler(j);
      };
      nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, handler)})};
      node.start();
      await_registration(broker);
      broker.send(job_of("j1", "f", 1));
      broker.send(job_of("j2", "f", 2));  // queued behind j1: handed back, not run
      REQUIRE(broker.wait_until([&] { return started->load(); }, 5s));
      auto t0 = std::chrono::steady_clock::now();
      auto stopping = std::async(std::launch::async, [&] { node.stop(); });
      REQUIRE(broker.wait_until([&] { return broker.count<cl::bye>() == 1; }, 5s));
      REQUIRE(stopping.wait_for(5s) == std::future_status::ready);
      CHECK(std::chrono::steady_clock::now() - t0 < 3s);
      REQUIRE(has_done(broker, "j1"));
      CHECK(done_of(broker, "j1")->outcome == "ok");
      CHECK_FALSE(has_done(broker, "j2"));
      CHECK(broker.index_of<cl::done>() < broker.index_of<cl::bye>());
      CHECK(broker.all<cl::bye>().front().jobs == std::vector<std::string>{"j2"});
      // No credit is granted while stopping.
      CHECK(done_of(broker, "j1")->credit == 0);
      CHECK(broker.count<cl::credit>() == 0);
      node.stop();  // idempotent
    }
  }
}

TEST_CASE("stop hands a stuck job back in bye after the grace and returns") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto g = std::make_shared<gate>();
  auto handler = [g](const nodes::job& j) {
    g->wait(10s);
    return ok_handler(j);
  };
  auto opts = options_for(broker, {kind_of("k", {"f"}, 1, handler)});
  opts.shutdown_grace_ms = 300;
  auto node = std::make_unique<nodes::node_runtime>(ctx, opts);
  node->start();
  await_registration(broker);
  broker.send(job_of("j1", "f", 1));
  REQUIRE(broker.wait_until([&] { return g->entered.load(); }, 5s));
  auto t0 = std::chrono::steady_clock::now();
  auto stopping = std::async(std::launch::async, [&] { node->stop(); });
  REQUIRE(broker.wait_until([&] { return broker.count<cl::bye>() == 1; }, 5s));
  REQUIRE(stopping.wait_for(5s) == std::future_status::ready);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 250ms);  // it waited for the grace
  CHECK(took < 3s);
  CHECK(broker.all<cl::bye>().front().jobs == std::vector<std::string>{"j1"});
  CHECK_FALSE(has_done(broker, "j1"));
  node.reset();
  // Let the abandoned handler end; its result goes nowhere.
  g->release();
  CHECK(eventually([&] { return g->left.load(); }, 5s));
  broker.pump_for(100ms);
  CHECK_FALSE(has_done(broker, "j1"));
  std::this_thread::sleep_for(100ms);  // the detached system ends after the handler
}

TEST_CASE("stop is idempotent and returns at once when nothing is held or nothing started") {
  zmq::context_t ctx;
  nodes::node_options o;
  o.broker_endpoint = "inproc://nobody-listens-here";
  o.kinds = {kind_of("k", {"f"}, 1, ok_handler)};
  {
    nodes::node_runtime never_started{ctx, o};
    never_started.stop();
    never_started.stop();
  }
  nodes::node_runtime node{ctx, o};
  node.start();
  node.start();  // no effect
  auto t0 = std::chrono::steady_clock::now();
  node.stop();
  node.stop();
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  node.start();  // after stop: no effect
}
