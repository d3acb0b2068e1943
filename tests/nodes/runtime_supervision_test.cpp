// The node runtime against a fake broker (fake_broker.hpp): supervision: workers
// restarted after a crash, kinds withdrawn after too many restarts, job time
// limits, worker threads, invalid kinds.
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

TEST_CASE("with prefetch a worker runs the jobs queued in its mailbox in order and one waiting behind a crash runs after the restart") {
  const bool blocking = GENERATE(true, false);  // own threads, or the scheduler's (actor_kind_spec::blocking)
  CAPTURE(blocking);
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto order = std::make_shared<std::vector<std::string>>();
  auto mu = std::make_shared<std::mutex>();
  auto kind = kind_of("k", {"f"}, 1, [order, mu](const nodes::job& j) -> nodes::job_result {
    {
      std::lock_guard<std::mutex> lk(*mu);
      order->push_back(j.id);
    }
    if (j.id == "crash") throw std::runtime_error("handler bug");
    std::this_thread::sleep_for(20ms);
    return nodes::job_result::success({{"ok", true}});
  });
  kind.prefetch = 4;
  kind.blocking = blocking;
  kind.limits.restart_backoff_ms = 10;
  nodes::node_runtime node{ctx, options_for(broker, {kind})};
  node.start();
  await_registration(broker);
  int64_t lease = 0;
  for (const char* id : {"a", "b", "c"})
    broker.send(job_of(id, "f", ++lease));
  REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == 3; }, 5s));
  {
    std::lock_guard<std::mutex> lk(*mu);
    CHECK(*order == std::vector<std::string>{"a", "b", "c"});
  }
  // "after" waits in the worker's mailbox behind "crash": the worker exits
  // after reporting "crash", and "after" runs on its replacement, unharmed.
  broker.send(job_of("crash", "f", 10));
  broker.send(job_of("after", "f", 11));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "crash") && has_done(broker, "after"); }, 5s));
  CHECK(done_of(broker, "crash")->error_code == "exception");
  CHECK(done_of(broker, "after")->outcome == "ok");
  CHECK(done_of(broker, "after")->credit == 1);
  {
    std::lock_guard<std::mutex> lk(*mu);
    CHECK(std::count(order->begin(), order->end(), "after") == 1);
  }
  node.stop();
}

TEST_CASE("workers of a kind that may block have a thread each and those of a kind that never blocks share the scheduler's two") {
  const bool blocking = GENERATE(true, false);
  CAPTURE(blocking);
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto threads = std::make_shared<std::set<std::thread::id>>();
  auto mu = std::make_shared<std::mutex>();
  auto kind = kind_of("k", {"f"}, 4, [threads, mu](const nodes::job&) -> nodes::job_result {
    {
      std::lock_guard<std::mutex> lk(*mu);
      threads->insert(std::this_thread::get_id());
    }
    std::this_thread::sleep_for(5ms);  // every worker gets jobs
    return nodes::job_result::success({{"ok", true}});
  });
  kind.blocking = blocking;
  nodes::node_runtime node{ctx, options_for(broker, {kind})};
  node.start();
  await_registration(broker);
  for (int i = 0; i < 40; ++i)
    broker.send(job_of("j" + std::to_string(i), "f", i + 1));
  REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == 40; }, 10s));
  for (const auto& d : broker.all<cl::done>()) CHECK(d.outcome == "ok");
  {
    std::lock_guard<std::mutex> lk(*mu);
    if (blocking)
      CHECK(threads->size() == 4);
    else
      CHECK(threads->size() <= 2);
  }
  node.stop();
}

TEST_CASE("a worker whose handler threw is restarted with a fresh handler, and other kinds keep working") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  std::atomic<int> made{0};
  auto spec = kind_of("k", {"f"}, 1, [](const nodes::job& j) -> nodes::job_result {
    if (j.id == "boom") throw std::runtime_error("handler bug");
    return nodes::job_result::success({{"ok", true}});
  });
  auto inner = spec.make_handler;
  spec.make_handler = [&made, inner] {
    ++made;
    return inner();
  };
  std::atomic<bool> release{false};
  auto slow = kind_of("other", {"g"}, 1, [&](const nodes::job&) {
    while (!release) std::this_thread::sleep_for(5ms);
    return nodes::job_result::success({{"ok", true}});
  });
  nodes::node_runtime node{ctx, options_for(broker, {spec, kind_of("third", {"h"}, 1, ok_handler)})};
  node.start();
  await_registration(broker);
  CHECK(made == 1);
  broker.send(job_of("boom", "f", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "boom"); }, 5s));
  CHECK(done_of(broker, "boom")->outcome == "transient");  // a failed attempt, not lost
  broker.send(job_of("h1", "h", 2));                        // another kind is not disturbed
  CHECK(broker.wait_until([&] { return has_done(broker, "h1"); }, 5s));
  CHECK(broker.wait_until([&] { return made == 2; }, 5s));  // restarted afresh
  broker.send(job_of("after", "f", 3));
  CHECK(broker.wait_until([&] { return has_done(broker, "after"); }, 5s));
  CHECK(done_of(broker, "after")->outcome == "ok");
  release = true;
  node.stop();
}

TEST_CASE("a job past its time limit fails as timeout, its worker is replaced, its late result dropped") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  gate g;
  auto spec = kind_of("k", {"f"}, 1, [&](const nodes::job& j) {
    if (j.id == "hang") g.wait(10s);
    return nodes::job_result::success({{"job", j.id}});
  });
  spec.limits.job_timeout_ms = 300;
  nodes::node_runtime node{ctx, options_for(broker, {spec})};
  node.start();
  await_registration(broker);
  broker.send(job_of("hang", "f", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "hang"); }, 5s));
  auto d = *done_of(broker, "hang");
  CHECK(d.outcome == "transient");
  CHECK(d.error_code == "timeout");
  CHECK(g.entered);
  CHECK(!g.left);  // still blocked: the pool did not wait for it
  // The replacement worker serves the kind's next job meanwhile.
  broker.send(job_of("next", "f", 2));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "next"); }, 5s));
  CHECK(done_of(broker, "next")->outcome == "ok");
  // When the abandoned call returns, its result goes nowhere.
  g.release();
  REQUIRE(eventually([&] { return g.left.load(); }, 5s));
  broker.pump_for(300ms);
  int dones = 0;
  for (const auto& x : broker.all<cl::done>())
    if (x.job_id == "hang") ++dones;
  CHECK(dones == 1);
  node.stop();
}

TEST_CASE("with prefetch a job queued behind one past its time limit runs once on the replacement worker") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  gate g;
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto spec = kind_of("k", {"f"}, 1, [&g, runs](const nodes::job& j) {
    if (j.id == "hang") g.wait(10s);
    if (j.id == "queued") ++*runs;
    return nodes::job_result::success({{"job", j.id}});
  });
  spec.prefetch = 4;
  spec.limits.job_timeout_ms = 300;
  nodes::node_runtime node{ctx, options_for(broker, {spec})};
  node.start();
  await_registration(broker);
  broker.send(job_of("hang", "f", 1));
  broker.send(job_of("queued", "f", 2));  // in the hung worker's mailbox
  REQUIRE(broker.wait_until([&] { return has_done(broker, "hang") && has_done(broker, "queued"); }, 5s));
  CHECK(done_of(broker, "hang")->error_code == "timeout");
  CHECK(done_of(broker, "queued")->outcome == "ok");
  // The abandoned worker's call returns: it skips what was left in its mailbox.
  g.release();
  REQUIRE(eventually([&] { return g.left.load(); }, 5s));
  broker.pump_for(300ms);
  CHECK(runs->load() == 1);
  CHECK(broker.count<cl::done>() == 2);
  node.stop();
}

TEST_CASE("invalid kinds are rejected when the runtime is made") {
  zmq::context_t ctx;
  nodes::node_options o;
  o.kinds = {kind_of("k", {"f"}, 0, ok_handler)};
  CHECK_THROWS_AS(nodes::node_runtime(ctx, o), std::invalid_argument);
  o.kinds = {kind_of("a", {"f"}, 1, ok_handler), kind_of("b", {"f"}, 1, ok_handler)};
  CHECK_THROWS_AS(nodes::node_runtime(ctx, o), std::invalid_argument);
  o.kinds = {kind_spec("k", {"f"}, 1, nullptr)};
  CHECK_THROWS_AS(nodes::node_runtime(ctx, o), std::invalid_argument);
}

TEST_CASE("a kind whose handler cannot be made answers its jobs as transient failures") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto k = kind_spec("k", {"f"}, 1, []() -> std::unique_ptr<nodes::job_handler> {
    throw std::runtime_error("no credentials");
  });
  nodes::node_runtime node{ctx, options_for(broker, {k})};
  node.start();
  await_registration(broker);
  broker.send(job_of("j1", "f", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
  CHECK(done_of(broker, "j1")->outcome == "transient");
  CHECK(done_of(broker, "j1")->error_code == "no_handler");
  node.stop();
}
