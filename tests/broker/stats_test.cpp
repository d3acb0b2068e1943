// Tests of broker/stats: the typed stats, their /stats JSON (the keys of
// docs/operations.md, "Watching it", which the dashboard and the CLI read) and
// the loop's counters.
#include "broker/stats.hpp"

#include <catch2/catch.hpp>

#include <set>

using namespace klynaa::broker;
using json = nlohmann::json;

namespace {

broker_stats full() {
  broker_stats s;
  s.ts_ms = 1700000000000;
  s.version = "0.2.0";
  s.commit = "abc";
  s.pending = 3;
  s.functions["processEscrowRelease"] = {{{"ready", 1}, {"running", 0}}, {{"ok", 5}, {"dead", 1}}};
  s.functions["sendPickupNotification"] = {{{"ready", 2}}, {}};
  s.nodes.push_back({"node-1", {"escrow", "notifier"}, 3, 1, 1699999999000,
                     json{{"jobs", {{"processEscrowRelease", {{"ok", 5}}}}}}, {{"geo", "too many restarts"}}});
  s.ingress = {{"accepted", 10}, {"rejected", 2}};
  s.dead_total = 2;
  s.dead_letters = 1;
  s.durations["processEscrowRelease"] = {{0.001, 0.01}, {1, 2}, 0.5, 3};
  s.recent_failures.push_back({1, "j1", "processEscrowRelease", 2, "node-1", "retry", "http_503", "down"});
  s.retrying.push_back({"j1", "processEscrowRelease", 2, 1700000001000});
  s.history.push_back({1700000000000, 5, 2, 1, 10, 3});
  s.draining = true;
  s.disk_free_mb = 1234;
  s.store = {7, 10, 20, 1500000};
  s.cluster_link = {1, 2, 3, 4};
  s.ack_stages["commit"] = {9, 400, 700, 900, 950};
  return s;
}

}  // namespace

TEST_CASE("the /stats document has exactly the documented keys and values", "[stats]") {
  auto j = to_json(full());
  const std::set<std::string> keys = {"ts_ms", "version", "commit", "pending", "functions", "nodes", "ingress",
                                      "dead_total", "dead_letters", "durations", "recent_failures", "retrying",
                                      "history", "draining", "disk_free_mb", "store", "cluster_link",
                                      "ack_timeline"};
  std::set<std::string> got;
  for (auto& [k, v] : j.items()) got.insert(k);
  CHECK(got == keys);
  CHECK(j["functions"] == json::parse(R"({
    "processEscrowRelease": {"ready": 1, "running": 0, "outcomes": {"ok": 5, "dead": 1}},
    "sendPickupNotification": {"ready": 2}})"));
  CHECK(j["nodes"][0] == json::parse(R"({"name": "node-1", "kinds": ["escrow", "notifier"], "credit": 3,
    "running": 1, "last_heartbeat_ms": 1699999999000, "stats": {"jobs": {"processEscrowRelease": {"ok": 5}}},
    "withdrawn": {"geo": "too many restarts"}})"));
  CHECK(j["durations"] == json::parse(R"({"processEscrowRelease": {"bounds": [0.001, 0.01], "buckets": [1, 2],
    "sum": 0.5, "count": 3}})"));
  CHECK(j["recent_failures"][0] == json::parse(R"({"ts_ms": 1, "job_id": "j1", "function": "processEscrowRelease",
    "attempt": 2, "node": "node-1", "outcome": "retry", "code": "http_503", "message": "down"})"));
  CHECK(j["retrying"][0] == json::parse(R"({"job_id": "j1", "function": "processEscrowRelease", "attempts": 2,
    "next_run_ms": 1700000001000})"));
  CHECK(j["history"][0] == json::parse(R"({"ts_ms": 1700000000000, "ok": 5, "retry": 2, "dead": 1,
    "accepted": 10, "pending": 3})"));
  CHECK(j["store"] == json::parse(R"({"commits": 7, "requests": 10, "updates": 20, "commit_seconds": 1.5})"));
  CHECK(j["cluster_link"] == json::parse(R"({"frames_sent": 1, "messages_sent": 2, "frames_received": 3,
    "messages_received": 4})"));
  CHECK(j["ack_timeline"] == json::parse(R"({"commit": {"n": 9, "p50_us": 400, "p90_us": 700, "p99_us": 900,
    "max_us": 950}})"));
  CHECK(j["ingress"] == json{{"accepted", 10}, {"rejected", 2}});
  CHECK(j["draining"] == true);
  CHECK(j["disk_free_mb"] == 1234);
  CHECK(j["dead_letters"] == 1);
  CHECK(j["pending"] == 3);
}

TEST_CASE("a /stats document reads back into the same stats", "[stats]") {
  auto j = to_json(full());
  CHECK(to_json(stats_from_json(j)) == j);
  auto empty = to_json(broker_stats{});
  CHECK(to_json(stats_from_json(empty)) == empty);
  CHECK(empty["disk_free_mb"] == -1);
}

TEST_CASE("an active broker on PostgreSQL adds its role, a standby shows only who it is", "[stats]") {
  auto s = full();
  s.role = "active";
  s.broker_name = "b1";
  auto j = to_json(s);
  CHECK(j["role"] == "active");
  CHECK(j["broker_name"] == "b1");
  CHECK(j.contains("functions"));
  broker_stats standby;
  standby.role = "standby";
  standby.broker_name = "b2";
  standby.lease_ms = 5000;
  standby.message = "standby broker";
  CHECK(to_json(standby) == json{{"role", "standby"}, {"broker_name", "b2"}, {"lease_ms", 5000},
                                 {"message", "standby broker"}});
  auto back = stats_from_json(to_json(standby));
  CHECK(back.role == std::optional<std::string>("standby"));
  CHECK(back.lease_ms == 5000);
}

TEST_CASE("reading stats keeps defaults for missing or mistyped keys", "[stats]") {
  auto s = stats_from_json(json::parse(R"({"pending": "many", "functions": {"f": {"ready": "x", "running": 2},
    "g": null}, "nodes": [{"name": 3, "kinds": ["geo", 1], "withdrawn": {"geo": 5}}], "dead_letters": 4})"));
  CHECK(s.pending == 0);
  CHECK(s.dead_letters == 4);
  CHECK(s.functions["f"].states == std::map<std::string, int64_t>{{"running", 2}});
  CHECK(s.functions.count("g"));
  REQUIRE(s.nodes.size() == 1);
  CHECK(s.nodes[0].name.empty());
  CHECK(s.nodes[0].kinds == std::vector<std::string>{"geo"});
  CHECK(s.nodes[0].withdrawn.at("geo").empty());
  CHECK(s.disk_free_mb == -1);
  CHECK(stats_from_json(json::array()).pending == 0);
}

TEST_CASE("the counters keep the newest 50 failures and 120 history points of the outcome totals", "[stats]") {
  stats_counters c;
  for (int i = 0; i < 60; ++i) c.note_failure({i, "j" + std::to_string(i), "f", 1, "", "retry", "", ""});
  REQUIRE(c.recent_failures.size() == 50);
  CHECK(c.recent_failures.front().ts_ms == 10);
  CHECK(c.recent_failures.back().ts_ms == 59);
  c.outcomes["a"]["ok"] = 3;
  c.outcomes["b"]["ok"] = 4;
  c.outcomes["b"]["dead"] = 1;
  c.ingress["accepted"] = 9;
  for (int i = 0; i < 130; ++i) c.add_history(i, 6);
  REQUIRE(c.history.size() == 120);
  CHECK(c.history.front().ts_ms == 10);
  const auto& h = c.history.back();
  CHECK(h.ok == 7);
  CHECK(h.retry == 0);
  CHECK(h.dead == 1);
  CHECK(h.accepted == 9);
  CHECK(h.pending == 6);
}

TEST_CASE("durations are published as the Prometheus buckets they fell in", "[stats]") {
  stats_counters c;
  c.durations["f"].observe(0.0005);
  c.durations["f"].observe(0.02);
  c.durations["f"].observe(100);  // over the last bound: only in the count and the sum
  auto d = c.duration_snapshot().at("f");
  REQUIRE(d.bounds.size() == 14);
  REQUIRE(d.buckets.size() == 14);
  CHECK(d.bounds.front() == 0.001);
  CHECK(d.buckets[0] == 1);
  CHECK(d.buckets[3] == 1);  // <= 0.025
  int64_t sum = 0;
  for (auto b : d.buckets) sum += b;
  CHECK(sum == 2);
  CHECK(d.count == 3);
  CHECK(d.sum == Approx(100.0205));
}

TEST_CASE("the ack timeline splits each request into its stages, and total is received to sent", "[stats]") {
  ack_timeline t;
  for (int64_t i = 0; i < 100; ++i)  // received 0.1 ms before the batch left; 1 ms commit
    t.observe({1000, 1100, 1150, 2150 + i, 2200 + i, 2300 + i});
  t.observe({0, 0, 5000, 5400, 5410, 5500});  // an internal request: no receive point
  auto s = t.summary(6000);
  REQUIRE(s.count("total"));
  CHECK(s["queued"].n == 100);
  CHECK(s["queued"].p50_us == 100);
  CHECK(s["handoff"].p99_us == 50);
  CHECK(s["commit"].n == 101);
  CHECK(s["commit"].max_us == 1099);
  CHECK(s["commit"].p50_us >= 1000);
  CHECK(s["wakeup"].p50_us == 50);
  CHECK(s["reply"].max_us == 100);
  CHECK(s["total"].n == 100);
  CHECK(s["total"].max_us == 1399);
  CHECK(ack_timeline{}.summary(1).empty());
}

TEST_CASE("the ack timeline covers the last 10 to 20 seconds", "[stats]") {
  constexpr int64_t w = ack_timeline::window_us;
  ack_timeline t;
  t.observe({1, 2, 3, 4, 5, 1000});              // the first window, [0, w)
  t.observe({w, w + 1, w + 2, w + 3, w + 4, w + 2000});  // the next window
  CHECK(t.summary(w + 3000)["total"].n == 2);    // both windows
  CHECK(t.summary(2 * w + 2500)["total"].n == 1);  // the first one is gone
  CHECK(t.summary(4 * w).empty());               // nothing for over a window
}
