// The node runtime against a fake broker (fake_broker.hpp): jobs on their kind's
// handler, DONE with results and failures, queueing beyond the workers, batches,
// the job log lines and the node's stats.
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

TEST_CASE("a job runs on its kind's handler and done comes back with the result and children") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto seen = std::make_shared<nodes::job>();
  auto handler = [seen](const nodes::job& j) {
    *seen = j;
    auto r = nodes::job_result::success({{"sent", 1}});
    r.children.push_back({j.id + "#1", "sendPushNotification", {{"user_id", 7}}, 0});
    return r;
  };
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("notifier", {"notifyWorkers"}, 1, handler)})};
  node.start();
  await_registration(broker);
  cl::job j{"evt-1#1", "notifyWorkers", R"({"pickup_id":3})", 2, 11, 1700000000123};
  broker.send(j);
  REQUIRE(broker.wait_until([&] { return has_done(broker, "evt-1#1"); }, 5s));
  auto d = *done_of(broker, "evt-1#1");
  CHECK(d.lease == 11);
  CHECK(d.outcome == "ok");
  CHECK(nlohmann::json::parse(d.result_json) == nlohmann::json{{"sent", 1}});
  CHECK(d.http_status == 0);
  CHECK(d.retry_after_ms == -1);
  CHECK(d.duration_ms >= 0);
  REQUIRE(d.children.size() == 1);
  CHECK(d.children[0].job_id == "evt-1#1#1");
  CHECK(d.children[0].function == "sendPushNotification");
  CHECK(nlohmann::json::parse(d.children[0].data_json) == nlohmann::json{{"user_id", 7}});
  // The handler saw the job as the broker sent it.
  CHECK(seen->id == "evt-1#1");
  CHECK(seen->function == "notifyWorkers");
  CHECK(seen->data == nlohmann::json{{"pickup_id", 3}});
  CHECK(seen->attempt == 2);
  CHECK(seen->ts_ms == 1700000000123);
  CHECK(seen->node == "node-t");
  // The DONE grants the slot it frees again: credit 1, no CREDIT message.
  CHECK(d.credit == 1);
  broker.pump_for(50ms);
  CHECK(broker.count<cl::credit>() == 0);
  node.stop();
}

TEST_CASE("a handler that throws counts as a transient failure with the exception's text") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto handler = [](const nodes::job&) -> nodes::job_result { throw std::runtime_error("boom"); };
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, handler)})};
  node.start();
  await_registration(broker);
  broker.send(job_of("j1", "f", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
  auto d = *done_of(broker, "j1");
  CHECK(d.outcome == "transient");
  CHECK(d.error_code == "exception");
  CHECK(d.error_message == "boom");
  // The worker was restarted (after its backoff): the next job runs.
  broker.send(job_of("j2", "f", 2));
  CHECK(broker.wait_until([&] { return has_done(broker, "j2"); }, 5s));
  node.stop();
}

TEST_CASE("a handler's failure keeps its outcome, code, http status and retry-after") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto handler = [](const nodes::job& j) {
    if (j.id == "j404")
      return nodes::job_result::failure(nodes::outcome::permanent, "http_404", "no such pickup", 404);
    auto r = nodes::job_result::failure(nodes::outcome::transient, "http_429", "slow down", 429);
    r.retry_after_ms = 3000;
    return r;
  };
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, handler)})};
  node.start();
  await_registration(broker);
  broker.send(job_of("j404", "f", 1));
  broker.send(job_of("j429", "f", 2));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "j404") && has_done(broker, "j429"); }, 5s));
  auto d = *done_of(broker, "j404");
  CHECK(d.outcome == "permanent");
  CHECK(d.error_code == "http_404");
  CHECK(d.error_message == "no such pickup");
  CHECK(d.http_status == 404);
  CHECK(d.retry_after_ms == -1);
  auto t = *done_of(broker, "j429");
  CHECK(t.outcome == "transient");
  CHECK(t.http_status == 429);
  CHECK(t.retry_after_ms == 3000);
  node.stop();
}

TEST_CASE("a job whose data is not a JSON object fails permanently without reaching the handler") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto calls = std::make_shared<std::atomic<int>>(0);
  auto handler = [calls](const nodes::job& j) {
    ++*calls;
    return ok_handler(j);
  };
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, handler)})};
  node.start();
  await_registration(broker);
  broker.send(job_of("j1", "f", 1, "[1,2"));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
  CHECK(done_of(broker, "j1")->outcome == "permanent");
  CHECK(done_of(broker, "j1")->error_code == "invalid_data");
  CHECK(*calls == 0);
  node.stop();
}

TEST_CASE("a job for a function no hosted kind runs is answered permanent not_hosted") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  nodes::node_runtime node{ctx, options_for(broker, {kind_of("k", {"f"}, 1, ok_handler)})};
  node.start();
  await_registration(broker);
  broker.send(job_of("j1", "computeRoute", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
  auto d = *done_of(broker, "j1");
  CHECK(d.credit == 1);
  CHECK(d.outcome == "permanent");
  CHECK(d.error_code == "not_hosted");
  CHECK(d.lease == 1);
  node.stop();
}

TEST_CASE("the node queues jobs beyond its workers and never runs more than workers at once") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto running = std::make_shared<std::atomic<int>>(0);
  auto most = std::make_shared<std::atomic<int>>(0);
  auto handler = [running, most](const nodes::job& j) {
    int now = ++*running;
    int seen = most->load();
    while (now > seen && !most->compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(60ms);
    --*running;
    return ok_handler(j);
  };
  auto kind = kind_of("k", {"f"}, 2, handler);
  kind.prefetch = 3;  // asks for 5 jobs, runs 2 at once
  nodes::node_runtime node{ctx, options_for(broker, {kind})};
  node.start();
  await_registration(broker);
  CHECK(broker.all<cl::ready>().front().credit == 5);
  for (int i = 0; i < 6; ++i)
    broker.send(job_of("j" + std::to_string(i), "f", 100 + i));
  REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == 6; }, 10s));
  CHECK(most->load() == 2);
  for (const auto& d : broker.all<cl::done>())
    CHECK(d.outcome == "ok");
  // Each DONE grants its slot again (credit 1), and nothing more is granted.
  broker.pump_for(50ms);
  for (const auto& d : broker.all<cl::done>())
    CHECK(d.credit == 1);
  CHECK(broker.count<cl::credit>() == 0);
  node.stop();
}

TEST_CASE("job start and end are logged with the contract's fields") {
  std::ostringstream out;
  log::init(log::level::info, &out);
  {
    zmq::context_t ctx;
    fake_broker broker{ctx, unique_inproc()};
    auto handler = [](const nodes::job&) {
      return nodes::job_result::failure(nodes::outcome::transient, "connect", "Django is down");
    };
    nodes::node_runtime node{ctx, options_for(broker, {kind_of("escrow", {"f"}, 1, handler)})};
    node.start();
    await_registration(broker);
    broker.send(cl::job{"j1", "f", "{}", 3, 1, 0});
    REQUIRE(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
    node.stop();  // every thread that logs has ended
  }
  log::init(log::level::info);
  std::istringstream lines{out.str()};
  std::string line;
  nlohmann::json start, end;
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("job_id", "") == "j1")
      (j.value("msg", "") == "job started" ? start : end) = j;
  }
  INFO(out.str());
  REQUIRE(start.is_object());
  REQUIRE(end.is_object());
  CHECK(start["component"] == "escrow");
  CHECK(start["function"] == "f");
  CHECK(start["attempt"] == 3);
  CHECK(start["node"] == "node-t");
  CHECK(end["outcome"] == "retry");
  CHECK(end["duration_ms"].is_number_integer());
  CHECK(end["error_code"] == "connect");
}

TEST_CASE("a registered node reports its stats with per-function outcomes") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto opts = options_for(broker, {kind_of("notifier", {"f"}, 2, ok_handler)});
  opts.stats_interval_ms = 100;
  nodes::node_runtime node{ctx, opts};
  node.start();
  await_registration(broker);
  broker.send(job_of("j1", "f", 1));
  REQUIRE(broker.wait_until([&] { return has_done(broker, "j1"); }, 5s));
  auto last_stats = [&] {
    auto all = broker.all<cl::node_stats>();
    return all.empty() ? nlohmann::json{} : nlohmann::json::parse(all.back().json);
  };
  REQUIRE(broker.wait_until(
      [&] {
        auto s = last_stats();
        return s.is_object() && s.contains("jobs") && s["jobs"].contains("f");
      },
      5s));
  auto s = last_stats();
  CHECK(s["node"] == "node-t");
  CHECK(s["capacity"] == 2);
  CHECK(s["kinds"] == nlohmann::json::array({{{"kind", "notifier"}, {"workers", 2}}}));
  CHECK(s["jobs"]["f"] == nlohmann::json{{"ok", 1}, {"retry", 0}, {"dead", 0}});
  node.stop();
}

TEST_CASE("a node says it takes batches, runs a BATCH of jobs, and batches its DONEs only for a broker that takes them") {
  for (bool broker_batches : {true, false}) {
    DYNAMIC_SECTION("broker takes batches: " << broker_batches) {
      zmq::context_t ctx;
      fake_broker broker{ctx, unique_inproc()};
      broker.batch = broker_batches;
      auto kind = kind_of("k", {"f"}, 4, ok_handler);
      kind.prefetch = 1000;
      nodes::node_runtime node{ctx, options_for(broker, {kind})};
      node.start();
      await_registration(broker);
      CHECK(broker.all<cl::ready>().front().batch);
      const int n = 500;
      std::vector<std::string> frames;
      for (int i = 0; i < n; ++i)
        frames.push_back(cl::encode(job_of("j" + std::to_string(i), "f", 100 + i)));
      broker.send(cl::batch{{frames.begin(), frames.begin() + n / 2}});
      broker.send(cl::batch{{frames.begin() + n / 2, frames.end()}});
      REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == static_cast<size_t>(n); }, 20s));
      for (int i = 0; i < n; ++i)
        CHECK(done_of(broker, "j" + std::to_string(i))->outcome == "ok");
      if (broker_batches)
        CHECK(broker.batches_received > 0);  // 500 DONEs from 4 workers: some arrive together
      else
        CHECK(broker.batches_received == 0);
      node.stop();
    }
  }
}

TEST_CASE("after a broker says bye the node sends no BATCH until a WELCOME says the next broker takes them") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  broker.batch = true;
  auto g = std::make_shared<gate>();
  auto handler = [g](const nodes::job& j) {
    g->wait(10s);
    return ok_handler(j);
  };
  auto kind = kind_of("k", {"f"}, 4, handler);
  kind.prefetch = 1000;
  nodes::node_runtime node{ctx, options_for(broker, {kind})};
  node.start();
  await_registration(broker);
  const int n = 200;
  for (int i = 0; i < n; ++i)
    broker.send(job_of("j" + std::to_string(i), "f", 100 + i));
  REQUIRE(broker.wait_until([&] { return g->entered.load(); }, 5s));
  // The broker goes away; no broker welcomes the node for now (the next one may
  // be an older one): the jobs that finish meanwhile go out one DONE a frame.
  broker.auto_welcome = false;
  broker.send(cl::bye{});
  REQUIRE(broker.wait_until([&] { return broker.count<cl::ready>() >= 2; }, 5s));
  const int batches_before = broker.batches_received;
  g->release();
  REQUIRE(broker.wait_until([&] { return broker.count<cl::done>() == static_cast<size_t>(n); }, 20s));
  CHECK(broker.batches_received == batches_before);
  node.stop();
}
