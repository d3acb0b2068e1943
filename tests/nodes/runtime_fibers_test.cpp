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

/// Jobs of a fiber kind that suspend (nodes/suspend.hpp) until the test wakes
/// them: each wait registers its wake function here, and records whether it
/// was cancelled.
struct parked_jobs {
  std::mutex m;
  std::vector<std::function<void()>> wakes;
  std::atomic<int> cancelled{0};
  std::set<std::thread::id> threads;

  size_t waiting() {
    std::lock_guard<std::mutex> lock{m};
    return wakes.size();
  }
  void wake_all() {
    std::vector<std::function<void()>> all;
    {
      std::lock_guard<std::mutex> lock{m};
      all.swap(wakes);
    }
    for (auto& w : all) w();
  }
};

nodes::actor_kind_spec parking_kind(std::shared_ptr<parked_jobs> p, int workers) {
  auto kind = kind_of("k", {"f"}, workers, [p](const nodes::job& j) {
    {
      std::lock_guard<std::mutex> lock{p->m};
      p->threads.insert(std::this_thread::get_id());
    }
    bool waited = nodes::suspend_job([&](std::function<void()> wake) {
      std::lock_guard<std::mutex> lock{p->m};
      p->wakes.push_back(wake);
      return std::function<void()>([p, wake] {
        ++p->cancelled;
        wake();  // what a cancelled HTTP request does: its answer comes back at once
      });
    });
    if (!waited) return nodes::job_result::failure(nodes::outcome::transient, "not_on_fiber", "no fiber");
    return nodes::job_result::success({{"job", j.id}});
  });
  kind.fibers = true;
  kind.blocking = false;
  return kind;
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

TEST_CASE("a fiber job past its time limit has its wait cancelled, fails as timeout once, and its slot serves the next job") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto parked = std::make_shared<parked_jobs>();
  auto kind = parking_kind(parked, 1);
  kind.limits.job_timeout_ms = 300;
  nodes::node_runtime node{ctx, options_for(broker, {kind})};
  node.start();
  await_registration(broker);
  broker.send(job_of("stuck", "f", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "stuck"); }, 5s));
  CHECK(done_of(broker, "stuck")->error_code == "timeout");
  REQUIRE(eventually([&] { return parked->cancelled.load() == 1; }, 5s));  // its wait was cancelled
  {
    std::lock_guard<std::mutex> lock{parked->m};
    parked->wakes.clear();  // the stuck job's, called by the cancel already
  }
  broker.send(job_of("next", "f", 2));
  REQUIRE(broker.wait_until([&] { return parked->waiting() >= 1; }, 5s));
  parked->wake_all();
  REQUIRE(broker.wait_until([&] { return has_done(broker, "next"); }, 5s));
  CHECK(done_of(broker, "next")->outcome == "ok");
  broker.pump_for(200ms);
  int stuck = 0;
  for (const auto& d : broker.all<cl::done>())
    if (d.job_id == "stuck") ++stuck;
  CHECK(stuck == 1);  // the late end of the abandoned job is dropped
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
