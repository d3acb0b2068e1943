// Jobs that wait on Django hold no thread (issue 19; docs/reliability.md, "Jobs
// on fibers"): `klynaa run` against the reference Django app made slow, with
// its fault injection.
#include <fstream>

#include "django_support.hpp"
#include "tests/support/threads.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

/// Pickups made in Django without publishing anything.
std::vector<int> make_pickups(django_app& django, int n, const std::string& status) {
  std::vector<int> ids;
  for (int i = 0; i < n; ++i) {
    auto p = django.post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5}, {"lng", 3.4}, {"price", 500 + i},
                                                {"status", status}, {"worker_id", 201}, {"publish", false}});
    ids.push_back(p["pickup"]["id"].get<int>());
  }
  return ids;
}

void publish_all(const klynaa_server& k, const std::vector<int>& ids, const std::string& type, const std::string& tag) {
  zmq::context_t ctx;
  raw_client cl(ctx, k.ingress());
  for (int id : ids) {
    auto r = cl.call(publish_frame(tag + std::to_string(id), type,
                                   {{"pickup_id", id}, {"customer_id", 101}, {"worker_id", 201}}));
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
  }
}

int64_t running(const json& stats, const std::string& function) {
  if (!stats.contains("functions") || !stats["functions"].contains(function)) return 0;
  return stats["functions"][function].value("running", int64_t{0});
}

}  // namespace

TEST_CASE("80 notification jobs wait on a slow Django at once on a fixed set of threads", "[inflight]") {
  // Django answers every API call after 1.5 s; the adaptive limit starts at 10
  // calls and grows while the latency holds.
  cluster_under_test c(std::map<std::string, std::string>{{"KLYNAA_NODE_LIMIT_INITIAL", "100"}});
  auto ids = make_pickups(*c.django, 80, "accepted");
  const int threads_idle = thread_count(c.klynaa->proc().pid());
  c.django->post("/api/demo/faults/", {{"mode", "slow"}, {"delay_ms", 1500}, {"path_prefix", "/api/"}});
  publish_all(*c.klynaa, ids, "pickup.accepted", "acc-");
  json s;
  int most_threads = 0;
  int64_t most_running = 0;
  REQUIRE(wait_for([&] {
    s = c.stats();
    most_threads = std::max(most_threads, thread_count(c.klynaa->proc().pid()));
    most_running = std::max(most_running, running(s, "sendPickupNotification"));
    return most_running >= 60;
  }, 30000ms));
  INFO(s.dump());
  // The node's threads: CAF's scheduler, the HTTP loop, I/O, ZeroMQ, the log,
  // libcurl's short-lived resolver threads. Not one per job in flight.
  CHECK(most_threads <= threads_idle + 4);
  CHECK(most_threads <= 24);
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  REQUIRE(c.all_done({"sendPickupNotification"}, 60000ms));
  s = c.stats();
  CHECK(outcome_count(s, "sendPickupNotification", "ok") >= 80);
  CHECK(s.value("dead_letters", -1) == 0);
  // The node reports its limits (every 5 s): (django, sendPickupNotification) was used.
  json limits;
  CHECK(wait_for([&] {
    auto st = c.stats();
    if (!st.contains("nodes") || st["nodes"].empty()) return false;
    limits = st["nodes"][0].value("stats", json::object()).value("extra", json::object()).value("limits", json::object());
    return limits.contains("downstreams") && limits["downstreams"].contains("django");
  }, 15000ms));
  INFO(limits.dump());
  CHECK(limits["downstreams"]["django"]["functions"].contains("sendPickupNotification"));
}

TEST_CASE("a node backed up behind its limits takes no more jobs than it can start: the rest wait in the broker",
          "[inflight]") {
  // Django's limit held at 4 calls; every call takes 1 s; the node has 1,000
  // notifier workers. It grants 4 x limit_initial = 16 slots at first, and the
  // slots jobs free are not granted again while more calls wait than run.
  cluster_under_test c(std::map<std::string, std::string>{
      {"KLYNAA_NODE_LIMIT_INITIAL", "4"}, {"KLYNAA_NODE_LIMIT_MAX", "4"}});
  auto ids = make_pickups(*c.django, 60, "accepted");
  c.django->post("/api/demo/faults/", {{"mode", "slow"}, {"delay_ms", 1000}, {"path_prefix", "/api/"}});
  publish_all(*c.klynaa, ids, "pickup.accepted", "acc-");
  json s;
  int64_t most_running = 0, most_waiting_in_broker = 0;
  REQUIRE(wait_for([&] {
    s = c.stats();
    const int64_t held = running(s, "sendPickupNotification");
    most_running = std::max(most_running, held);
    most_waiting_in_broker = std::max(most_waiting_in_broker, unfinished(s, "sendPickupNotification") - held);
    return outcome_count(s, "sendPickupNotification", "ok") >= 20;
  }, 60000ms));
  INFO(s.dump());
  CHECK(most_running <= 24);            // 16 granted, a few more as DONEs come; not 60
  CHECK(most_waiting_in_broker >= 30);  // the others waited where any node could take them
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  REQUIRE(c.all_done({"sendPickupNotification"}, 60000ms));
  s = c.stats();
  CHECK(outcome_count(s, "sendPickupNotification", "ok") == 60);
  CHECK(s.value("dead_letters", -1) == 0);
}

TEST_CASE("a Django endpoint that hangs costs only the jobs that call it an attempt: other kinds and heartbeats go on",
          "[inflight][faults]") {
  cluster_under_test c(std::map<std::string, std::string>{{"KLYNAA_DJANGO_TIMEOUT_MS", "2000"}});
  auto releases = make_pickups(*c.django, 5, "delivered");
  auto notices = make_pickups(*c.django, 20, "accepted");
  // The escrow endpoint hangs far past the client's timeout; everything else answers.
  c.django->post("/api/demo/faults/", {{"mode", "slow"}, {"delay_ms", 30000},
                                       {"path_prefix", "/api/serverless/escrow/"}});
  publish_all(*c.klynaa, releases, "pickup.confirmed", "conf-");
  REQUIRE(wait_for([&] { return running(c.stats(), "processEscrowRelease") == 5; }, 15000ms));
  publish_all(*c.klynaa, notices, "pickup.accepted", "acc-");
  json s;
  // The notifications finish while the releases hang.
  REQUIRE(wait_for([&] {
    s = c.stats();
    return outcome_count(s, "sendPickupNotification", "ok") >= 20;
  }, 20000ms));
  INFO(s.dump());
  CHECK(outcome_count(s, "processEscrowRelease", "ok") == 0);
  CHECK(unfinished(s, "processEscrowRelease") == 5);
  // The hung calls time out as a transient failure of their own job.
  REQUIRE(wait_for([&] {
    s = c.stats();
    for (auto& f : s.value("recent_failures", json::array()))
      if (f.value("function", "") == "processEscrowRelease" && f.value("code", "") == "timeout") return true;
    return false;
  }, 20000ms));
  // The node kept its heartbeats.
  REQUIRE(s["nodes"].size() == 1);
  CHECK(s.value("ts_ms", int64_t{0}) - s["nodes"][0].value("last_heartbeat_ms", int64_t{0}) < 3000);
  // Django answers again: each pickup is released once.
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  REQUIRE(c.all_done({"processEscrowRelease"}, 60000ms));
  s = c.stats();
  CHECK(outcome_count(s, "processEscrowRelease", "ok") == 5);
  std::map<int, int> released;
  const auto state = c.django->state();
  for (auto& r : state["escrow_releases"]) ++released[r["pickup_id"].get<int>()];
  for (int id : releases) CHECK(released[id] == 1);
}
