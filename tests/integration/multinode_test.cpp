// A broker and several `klynaa node` processes over TCP with the reference
// Django (issue 5): jobs spread across nodes; a node killed with SIGKILL loses
// nothing; Django never sees a second successful release for a pickup.
#include <set>

#include "django_support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

/// Env of every process of a multi-node test: Django at `django_port`, quick
/// retries and a short node timeout.
std::map<std::string, std::string> cluster_env(int django_port) {
  return {{"DJANGO_API_URL", "http://127.0.0.1:" + std::to_string(django_port)},
          {"DJANGO_API_KEY", "test-key"},
          {"KLYNAA_RETRY_BASE_DELAY_MS", "100"},
          {"KLYNAA_RETRY_MAX_DELAY_MS", "500"},
          {"KLYNAA_RETRY_MAX_ATTEMPTS", "40"},
          {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"},
          {"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "1500"}};
}

/// Creates `n` delivered pickups in Django (without events) and publishes a
/// `pickup.confirmed` for each (ids `{prefix}{pickup id}`); returns the pickup ids.
std::vector<int> confirm_delivered_pickups(django_app& django, const std::string& ingress, int n,
                                           const std::string& prefix) {
  std::vector<int> pickups;
  for (int i = 0; i < n; ++i) {
    auto p = django.post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5}, {"lng", 3.4},
                                                {"price", 100 + i}, {"status", "delivered"},
                                                {"worker_id", 201}, {"publish", false}});
    pickups.push_back(p["pickup"]["id"].get<int>());
  }
  zmq::context_t ctx;
  raw_client client(ctx, ingress);
  for (int id : pickups) {
    auto r = client.call(publish_frame(prefix + std::to_string(id), "pickup.confirmed",
                                       {{"pickup_id", id}, {"customer_id", 101}}));
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
  }
  return pickups;
}

std::unique_ptr<process> start_node(const temp_dir& dir, const std::string& name, const std::string& broker,
                                    const std::map<std::string, std::string>& env,
                                    const std::string& actors = "notifier,escrow") {
  return std::make_unique<process>(
      std::vector<std::string>{KLYNAA_BINARY, "node", "--broker", broker, "--name", name, "--actors",
                               actors, "--data-dir", dir / name},
      env, dir / (name + ".log"));
}

}  // namespace

namespace {

/// Two nodes share 20 escrow releases; node a is hit by `sig` (SIGKILL, or
/// SIGSTOP: frozen past its lease, then thawed) while they are in flight.
void node_loss_scenario(int sig) {
  const int django_port = free_tcp_port();
  auto env = cluster_env(django_port);
  env["KLYNAA_NODE_ESCROW_WORKERS"] = "2";
  klynaa_server broker("broker", env);
  django_app django(broker.ingress(), django_port);
  temp_dir dir;
  auto a = start_node(dir, "node-a", broker.cluster(), env);
  auto b = start_node(dir, "node-b", broker.cluster(), env);
  REQUIRE(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 2; }, 30000ms));

  // 20 delivered pickups, confirmed: 20 escrow releases spread over both nodes.
  auto pickups = confirm_delivered_pickups(django, broker.ingress(), 20, "confirm-");
  // Kill one node while the releases are in flight.
  std::this_thread::sleep_for(200ms);
  a->kill(sig);
  if (sig == SIGKILL) a->wait(5000ms);

  REQUIRE(wait_for([&] {
    auto s = broker_stats(broker);
    return outcome_count(s, "processEscrowRelease", "ok") >= 20 &&
           unfinished(s, "processEscrowRelease") == 0 && unfinished(s, "sendPickupNotification") == 0;
  }, 90000ms));
  auto state = django.state();
  std::map<int, int> ok_calls;
  for (auto& c : state["escrow_calls"])
    if (c["status_code"] == 200) ++ok_calls[c["pickup_id"].get<int>()];
  for (int id : pickups) {
    INFO("pickup " << id);
    CHECK(ok_calls[id] == 1);  // exactly one successful release each
  }
  CHECK(broker_stats(broker).value("dead_letters", -1) == 0);
  if (sig == SIGSTOP) {
    // Thawed, the frozen node's late results change nothing and it registers again.
    a->kill(SIGCONT);
    CHECK(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 2; }, 20000ms));
    std::this_thread::sleep_for(1000ms);
    auto after = django.state();
    std::map<int, int> ok_after;
    for (auto& c : after["escrow_calls"])
      if (c["status_code"] == 200) ++ok_after[c["pickup_id"].get<int>()];
    for (int id : pickups) CHECK(ok_after[id] == 1);
  }
  CHECK(b->running());
  b->kill(SIGTERM);
  auto code = b->wait(15000ms);
  REQUIRE(code);
  CHECK(*code == 0);
  check_no_sanitizer_report(b->log());
}

}  // namespace

TEST_CASE("with two nodes, a node killed with SIGKILL loses no job and no escrow is released twice",
          "[multinode]") {
  node_loss_scenario(SIGKILL);
}

TEST_CASE("a node frozen with SIGSTOP past its lease: its jobs run elsewhere, its late results change nothing",
          "[multinode]") {
  node_loss_scenario(SIGSTOP);
}

TEST_CASE("kill -9 of the broker under load: the node reconnects and all accepted work completes once",
          "[multinode]") {
  const int django_port = free_tcp_port();
  const std::string cluster = "tcp://127.0.0.1:" + std::to_string(free_tcp_port());
  auto env = cluster_env(django_port);
  klynaa_server broker("broker", env, {"--cluster", cluster});
  django_app django(broker.ingress(), django_port);
  temp_dir dir;
  auto node = start_node(dir, "node-a", cluster, env);
  REQUIRE(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 1; }, 30000ms));
  auto pickups = confirm_delivered_pickups(django, broker.ingress(), 30, "bk-");
  broker.kill9_and_restart();  // same data dir and cluster port, new ingress port
  REQUIRE(wait_for([&] {
    auto s = broker_stats(broker);
    return s.value("nodes", json::array()).size() == 1 && unfinished(s, "processEscrowRelease") == 0 &&
           unfinished(s, "sendPickupNotification") == 0 && s.value("pending", -1) == 0;
  }, 90000ms));
  auto state = django.state();
  std::map<int, int> ok_calls;
  for (auto& c : state["escrow_calls"])
    if (c["status_code"] == 200) ++ok_calls[c["pickup_id"].get<int>()];
  for (int id : pickups) {
    INFO("pickup " << id);
    CHECK(ok_calls[id] == 1);
  }
  CHECK(node->running());  // the node kept running through the broker's restart
}

TEST_CASE("a node whose broker is unreachable or not a broker says so, backs off, and registers once it is up",
          "[multinode][bad-input]") {
  temp_dir dir;
  const int port = free_tcp_port();
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  auto env = cluster_env(free_tcp_port());
  auto count = [](const std::string& log, const std::string& what) {
    size_t n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  const std::string warning = "no answer from the broker";

  // Not a broker: an HTTP server (the reference Django) on the endpoint.
  django_app http;
  auto wrong = start_node(dir, "node-wrong", "tcp://127.0.0.1:" + std::to_string(http.port()), env);
  // Nothing listening yet on the broker's future port.
  auto node = start_node(dir, "node-a", endpoint, env);
  std::this_thread::sleep_for(3500ms);  // READYs at 0, 1 and 3 s, then every 4-5 s
  for (auto* p : {wrong.get(), node.get()}) {
    auto log = p->log();
    INFO(log);
    CHECK(p->running());
    CHECK(count(log, warning) >= 1);
    CHECK(count(log, warning) <= 3);  // backing off, not spinning
    CHECK(log.find("\"retry_in_ms\"") != std::string::npos);
  }

  // The broker comes up on that endpoint: the node registers without help.
  klynaa_server broker("broker", env, {"--cluster", endpoint});
  CHECK(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 1; }, 15000ms));
  CHECK(node->log().find("registered with the broker") != std::string::npos);
  for (auto* p : {wrong.get(), node.get()}) {
    p->kill(SIGTERM);
    auto code = p->wait(15000ms);
    REQUIRE(code);
    CHECK(*code == 0);
    check_no_sanitizer_report(p->log());
  }
}

TEST_CASE("jobs wait, visible in stats, while no node hosts their kind, and run when one connects",
          "[multinode][placement]") {
  const int django_port = free_tcp_port();
  auto env = cluster_env(django_port);
  klynaa_server broker("broker", env);
  django_app django(broker.ingress(), django_port);
  temp_dir dir;
  auto geo = start_node(dir, "node-geo", broker.cluster(), env, "geo");  // no escrow anywhere
  REQUIRE(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 1; }, 30000ms));
  auto pickups = confirm_delivered_pickups(django, broker.ingress(), 3, "wait-");
  std::this_thread::sleep_for(2000ms);
  auto s = broker_stats(broker);
  INFO(s.dump());
  CHECK(s["functions"]["processEscrowRelease"].value("ready", 0) == 3);  // waiting, not failed
  CHECK(outcome_count(s, "processEscrowRelease", "retry") == 0);
  CHECK(s.value("dead_letters", -1) == 0);
  CHECK(s["nodes"][0]["stats"].value("jobs", json::object()).count("processEscrowRelease") == 0);
  auto escrow = start_node(dir, "node-escrow", broker.cluster(), env, "escrow,notifier");
  CHECK(wait_for([&] {
    auto st = broker_stats(broker);
    return outcome_count(st, "processEscrowRelease", "ok") == 3 && unfinished(st, "processEscrowRelease") == 0;
  }, 60000ms));
  for (auto* p : {geo.get(), escrow.get()}) {
    p->kill(SIGTERM);
    auto code = p->wait(15000ms);
    REQUIRE(code);
    CHECK(*code == 0);
  }
}

TEST_CASE("a geo node that joins late answers like the others: Django's list plus the updates since",
          "[multinode][geo]") {
  const int django_port = free_tcp_port();
  auto env = cluster_env(django_port);
  klynaa_server broker("broker", env);
  django_app django(broker.ingress(), django_port);
  temp_dir dir;
  auto a = start_node(dir, "geo-a", broker.cluster(), env, "geo");
  REQUIRE(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 1; }, 30000ms));
  auto moved = [&](int worker, int applied) {
    auto r = django.post("/api/demo/workers/" + std::to_string(worker) + "/location/",
                         {{"lat", 6.70}, {"lng", 3.60}, {"available", true}});
    REQUIRE(r["ingress"]["status"] == "accepted");
    REQUIRE(wait_for([&] { return outcome_count(broker_stats(broker), "updateWorkerLocation", "ok") == applied; },
                     30000ms));
  };
  moved(205, 1);  // before b exists: b learns it from Django's available list
  auto b = start_node(dir, "geo-b", broker.cluster(), env, "geo");
  REQUIRE(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 2; }, 30000ms));
  moved(204, 2);  // after b joined: the fan-out brings it to both
  a->kill(SIGTERM);
  REQUIRE(a->wait(15000ms));
  REQUIRE(wait_for([&] { return broker_stats(broker).value("nodes", json::array()).size() == 1; }, 30000ms));
  // Only b is left to answer.
  auto [code, out] = run_cli({"invoke", "notifyNearbyWorkers", "--ingress", broker.ingress(), "--data",
                              R"({"pickup_id": 1, "lat": 6.70, "lng": 3.60, "radius_km": 1})"});
  INFO(out);
  REQUIRE(code == 0);
  auto reply = json::parse(out.substr(out.find('{')));
  std::set<int> found;
  for (auto& w : reply["result"]["workers"]) found.insert(w.get<int>());
  CHECK(found == std::set<int>{204, 205});
  b->kill(SIGTERM);
  CHECK(b->wait(15000ms));
}
