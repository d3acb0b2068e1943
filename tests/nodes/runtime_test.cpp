// The node runtime against a fake broker (fake_broker.hpp): registration,
// jobs and their DONE, credit, heartbeats, re-registration and graceful stop.
// Spec: docs/cluster-protocol.md. Every wait has a deadline.
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
#include "protocol/log.hpp"

using namespace klynaa;
using namespace std::chrono_literals;
using testing::fake_broker;
namespace cl = protocol::cluster;

namespace {

/// A handler running a function object.
class fn_handler : public nodes::job_handler {
 public:
  using fn = std::function<nodes::job_result(const nodes::job&)>;
  explicit fn_handler(fn f) : f_(std::move(f)) {}
  nodes::job_result run(const nodes::job& j) override { return f_(j); }

 private:
  fn f_;
};

nodes::actor_kind_spec kind_spec(std::string kind, std::vector<std::string> functions, int workers,
                                 std::function<std::unique_ptr<nodes::job_handler>()> make) {
  nodes::actor_kind_spec k;
  k.kind = std::move(kind);
  k.functions = std::move(functions);
  k.workers = workers;
  k.make_handler = std::move(make);
  return k;
}

nodes::actor_kind_spec kind_of(std::string kind, std::vector<std::string> functions, int workers, fn_handler::fn f) {
  return kind_spec(std::move(kind), std::move(functions), workers, [f] { return std::make_unique<fn_handler>(f); });
}

nodes::job_result ok_handler(const nodes::job&) {
  return nodes::job_result::success({{"ok", true}});
}

std::string unique_inproc() {
  static std::atomic<int> n{0};
  return "inproc://test-broker-" + std::to_string(++n);
}

nodes::node_options options_for(const fake_broker& b, std::vector<nodes::actor_kind_spec> kinds) {
  nodes::node_options o;
  o.broker_endpoint = b.endpoint();
  o.name = "node-t";
  o.kinds = std::move(kinds);
  o.shutdown_grace_ms = 5000;
  o.register_retry_ms = 100;
  return o;
}

cl::job job_of(std::string id, std::string function, int64_t lease, std::string data = "{}") {
  return {std::move(id), std::move(function), std::move(data), 1, lease, 1700000000000};
}

/// Registers the node with `b`: waits for READY (answered by WELCOME).
void await_registration(fake_broker& b) {
  REQUIRE(b.wait_until([&] { return b.count<cl::ready>() >= 1; }, 5s));
  b.pump_for(20ms);
}

std::optional<cl::done> done_of(const fake_broker& b, const std::string& job_id) {
  for (const auto& d : b.all<cl::done>())
    if (d.job_id == job_id)
      return d;
  return std::nullopt;
}

bool has_done(const fake_broker& b, const std::string& job_id) {
  return done_of(b, job_id).has_value();
}

/// A gate a handler can wait on; the test opens it.
struct gate {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  std::atomic<bool> entered{false};
  std::atomic<bool> left{false};

  void wait(std::chrono::milliseconds max) {
    entered = true;
    std::unique_lock<std::mutex> lock{m};
    cv.wait_for(lock, max, [&] { return open; });
    left = true;
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock{m};
      open = true;
    }
    cv.notify_all();
  }
};

template <class Pred>
bool eventually(Pred p, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!p()) {
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

}  // namespace

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

TEST_CASE("more restarts than max_restarts within the window withdraw the kind, and other kinds go on") {
  zmq::context_t ctx;
  fake_broker broker{ctx, unique_inproc()};
  auto crashing = kind_of("k", {"f"}, 1, [](const nodes::job&) -> nodes::job_result {
    throw std::runtime_error("poison");
  });
  crashing.limits.max_restarts = 2;
  crashing.limits.restart_backoff_ms = 10;
  auto o = options_for(broker, {crashing, kind_of("ok", {"g"}, 1, ok_handler)});
  nodes::node_runtime node{ctx, o};
  node.start();
  await_registration(broker);
  for (int i = 1; i <= 3; ++i) {
    broker.send(job_of("p" + std::to_string(i), "f", i));
    REQUIRE(broker.wait_until([&] { return has_done(broker, "p" + std::to_string(i)); }, 5s));
  }
  // The third death is one restart too many: the node withdraws "k".
  REQUIRE(broker.wait_until([&] { return broker.count<cl::withdraw>() == 1; }, 5s));
  auto w = broker.all<cl::withdraw>().front();
  CHECK(w.kinds == std::vector<std::string>{"k"});
  CHECK(w.credit == 1);
  CHECK(w.reason.find("node.max_restarts") != std::string::npos);
  // A job of the withdrawn kind the broker still sends comes straight back.
  broker.send(job_of("late", "f", 10));
  REQUIRE(broker.wait_until([&] { return broker.count<cl::withdraw>() == 2; }, 5s));
  CHECK(broker.all<cl::withdraw>()[1].jobs == std::vector<std::string>{"late"});
  CHECK(!has_done(broker, "late"));
  // The other kind works on.
  broker.send(job_of("g1", "g", 11));
  CHECK(broker.wait_until([&] { return has_done(broker, "g1"); }, 5s));
  CHECK(done_of(broker, "g1")->outcome == "ok");
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
