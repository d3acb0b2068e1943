// The node runtime against a fake broker (fake_broker.hpp): fiber kinds, many jobs
// suspended at once on the scheduler's threads, their time limits and stop.
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

namespace {

/// The process's thread count, from /proc/self/status.
int thread_count() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

}  // namespace

TEST_CASE("a fiber kind holds 300 jobs waiting at once on the scheduler's threads and finishes each when woken") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto parked = std::make_shared<parked_jobs>();
  nodes::node_runtime node{ctx, options_for(broker, {parking_kind(parked, 300)})};
  node.start();
  await_registration(broker);
  CHECK(broker.all<cl::ready>().front().credit == 300);
  const int threads_before = thread_count();
  for (int i = 0; i < 300; ++i) broker.send(job_of("p" + std::to_string(i), "f", i + 1));
  REQUIRE(broker.wait_until([&] { return parked->waiting() == 300; }, 20s));
  CHECK(thread_count() <= threads_before + 1);  // 300 waits, no thread each
  {
    std::lock_guard<std::mutex> lock{parked->m};
    CHECK(parked->threads.size() <= 2);  // CAF's scheduler threads
  }
  CHECK(broker.count<cl::done>() == 0);
  parked->wake_all();
  REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == 300; }, 20s));
  for (const auto& d : broker.all<cl::done>()) CHECK(d.outcome == "ok");
  CHECK(parked->cancelled == 0);
  node.stop();
}

TEST_CASE("stopping a node with fiber jobs waiting cancels the waits and hands nothing back twice") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto parked = std::make_shared<parked_jobs>();
  auto o = options_for(broker, {parking_kind(parked, 5)});
  o.shutdown_grace_ms = 300;
  nodes::node_runtime node{ctx, std::move(o)};
  node.start();
  await_registration(broker);
  for (int i = 0; i < 5; ++i) broker.send(job_of("s" + std::to_string(i), "f", i + 1));
  REQUIRE(broker.wait_until([&] { return parked->waiting() == 5; }, 5s));
  node.stop();  // returns: the waits were cancelled and the fibers finished
  CHECK(parked->cancelled == 5);
  broker.pump_for(100ms);
  REQUIRE(broker.count<cl::bye>() >= 1);
}
