// Circuit breakers end to end (issue 7): with Django down, the node's "django"
// breaker opens and jobs wait instead of burning their attempts; its state shows
// in /stats and /metrics; when Django is back a probe closes it and the jobs run.
#include "django_support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {
std::string breaker_state(const json& stats) {
  for (auto& n : stats.value("nodes", json::array())) {
    auto b = n.value("stats", json::object()).value("extra", json::object()).value("breakers", json::object());
    if (b.contains("django")) return b["django"].value("state", "");
  }
  return "";
}
}  // namespace

TEST_CASE("Django down: its breaker opens, jobs wait without burning attempts, then all complete",
          "[breaker][faults]") {
  cluster_under_test c(std::map<std::string, std::string>{{"KLYNAA_RETRY_MAX_ATTEMPTS", "3"},
                                                          {"KLYNAA_RETRY_BASE_DELAY_MS", "50"},
                                                          {"KLYNAA_RETRY_MAX_DELAY_MS", "200"},
                                                          {"KLYNAA_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"},
                                                          {"KLYNAA_CIRCUIT_BREAKER_OPEN_SECONDS", "1"},
                                                          {"KLYNAA_CIRCUIT_BREAKER_MAX_OPEN_SECONDS", "2"}});
  std::vector<int> pickups;
  for (int i = 0; i < 10; ++i) {
    auto p = c.django->post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5}, {"lng", 3.4}, {"price", 500 + i},
                                                   {"status", "delivered"}, {"worker_id", 201}, {"publish", false}});
    pickups.push_back(p["pickup"]["id"].get<int>());
  }
  c.django->post("/api/demo/faults/", {{"mode", "down"}});
  {
    zmq::context_t ctx;
    raw_client cl(ctx, c.klynaa->ingress());
    for (int id : pickups) {
      auto r = cl.call(publish_frame("brk-" + std::to_string(id), "pickup.confirmed", {{"pickup_id", id}, {"customer_id", 101}}));
      REQUIRE(r);
      REQUIRE(r->status == reply_status::accepted);
    }
  }
  // Without a breaker, 3 attempts 50-200 ms apart would kill all ten in about a
  // second. The breaker opens after 3 failures: the jobs wait.
  json s;
  CHECK(wait_for([&] {
    s = c.stats();
    return breaker_state(s) == "open" || breaker_state(s) == "half_open";
  }, 15000ms));
  INFO(s.dump());
  CHECK(c.klynaa->log().find("circuit opened") != std::string::npos);
  CHECK(c.klynaa->log().find("job waits for an open circuit breaker") != std::string::npos);
  CHECK(s.value("dead_letters", -1) <= 2);  // at most the jobs whose attempts the probes used
  CHECK(unfinished(s, "processEscrowRelease") >= 8);
  auto metrics = [&] {
    auto addr = c.klynaa->endpoints()["admin"].get<std::string>();
    httplib::Client h(addr.substr(0, addr.rfind(':')), std::stoi(addr.substr(addr.rfind(':') + 1)));
    auto r = h.Get("/metrics");
    return r ? r->body : std::string();
  }();
  CHECK(metrics.find("# TYPE klynaa_circuit_breaker_state gauge") != std::string::npos);
  CHECK(metrics.find("klynaa_circuit_breaker_opens_total{") != std::string::npos);

  // Django is back: a probe closes the breaker and the waiting jobs run.
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  REQUIRE(wait_for([&] {
    s = c.stats();
    return unfinished(s, "processEscrowRelease") == 0 &&
           outcome_count(s, "processEscrowRelease", "ok") + s.value("dead_letters", 0) == 10;
  }, 30000ms));
  CHECK(outcome_count(s, "processEscrowRelease", "ok") >= 8);
  CHECK(wait_for([&] { return breaker_state(c.stats()) == "closed"; }, 15000ms));
  auto state = c.django->state();
  std::map<int, int> ok;
  for (auto& call : state["escrow_calls"])
    if (call["status_code"] == 200) ++ok[call["pickup_id"].get<int>()];
  int released = 0;
  for (int id : pickups) {
    CHECK(ok[id] <= 1);
    released += ok[id];
  }
  CHECK(released == outcome_count(s, "processEscrowRelease", "ok"));
}
