// End to end (issue 4): `klynaa run` and the reference Django app as real
// processes: events travel ingress -> store -> node -> actor -> Django and a push.
#include <cstring>
#include <ctime>
#include <regex>
#include <set>

#include <sqlite3.h>

#include "django_support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {


json accepted_pickup(django_app& d) {
  auto p = d.post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.52}, {"lng", 3.37},
                                         {"price", 2500.5}, {"publish", false}});
  int id = p["pickup"]["id"];
  return d.post("/api/demo/pickups/" + std::to_string(id) + "/accept/", {{"worker_id", 201}});
}

}  // namespace

TEST_CASE("a pickup's events reach Django and the outbox: accepted, delivered, confirmed", "[e2e]") {
  cluster_under_test c(std::map<std::string, std::string>{{"KLYNAA_ESCROW_HOLD_SECONDS", "3600"}});
  auto acc = accepted_pickup(*c.django);
  REQUIRE(acc["ingress"]["status"] == "accepted");
  int id = acc["pickup"]["id"];
  auto pid = std::to_string(id);
  auto del = c.django->post("/api/demo/pickups/" + pid + "/deliver/", json::object());
  REQUIRE(del["ingress"]["status"] == "accepted");
  REQUIRE(del["ingress"]["jobs"].size() == 2);  // notification + the auto-release, due in an hour
  auto conf = c.django->post("/api/demo/pickups/" + pid + "/confirm/", json::object());
  REQUIRE(conf["ingress"]["status"] == "accepted");

  // The confirmation releases the escrow once; the worker hears of it once.
  bool released = wait_for([&] {
    auto s = c.django->state();
    for (auto& r : s["escrow_releases"])
      if (r["pickup_id"] == id) return true;
    return false;
  }, 30000ms);
  REQUIRE(released);
  // The worker's escrow_released push is a job created by the release job, so
  // wait for the outbox itself rather than for the queue to look empty.
  std::vector<json> lines;
  std::map<std::string, int> types;
  wait_for([&] {
    lines = outbox(c.klynaa->data_dir());
    types.clear();
    for (auto& l : lines)
      if (l["data"].value("pickup_id", 0) == id) ++types[l["notification_type"].get<std::string>()];
    return types["pickup_accepted"] >= 1 && types["pickup_delivered"] >= 1 && types["escrow_released"] >= 1;
  }, 30000ms);
  REQUIRE(c.all_done({"sendPickupNotification", "processEscrowRelease"}));
  CHECK(types["pickup_accepted"] >= 1);   // customer 101 has two devices
  CHECK(types["pickup_delivered"] >= 1);
  CHECK(types["escrow_released"] >= 1);   // worker 201
  for (auto& l : lines) {
    CHECK(l.contains("ts"));
    CHECK(l.contains("job_id"));
    CHECK(l.contains("token"));
    CHECK(l.contains("title"));
  }
  // The pending auto-release was cancelled by the confirmation: one release call.
  int calls = 0;
  auto final_state = c.django->state();
  for (auto& call : final_state["escrow_calls"])
    if (call["pickup_id"] == id) ++calls;
  CHECK(calls == 1);
}

namespace {
/// A daily cron expression for the UTC minute `minutes_ago` minutes before now.
std::string cron_minutes_ago(int minutes_ago) {
  std::time_t t = std::time(nullptr) - minutes_ago * 60;
  std::tm tm{};
  gmtime_r(&t, &tm);
  return std::to_string(tm.tm_min) + " " + std::to_string(tm.tm_hour) + " * * *";
}

/// Tokens that received a push of `type` about pickup `id` (0: any pickup).
std::multiset<std::string> pushed(const std::vector<json>& lines, const std::string& type, int id = 0) {
  std::multiset<std::string> out;
  for (auto& l : lines)
    if (l.value("notification_type", "") == type && (id == 0 || l["data"].value("pickup_id", 0) == id))
      out.insert(l.value("token", ""));
  return out;
}
}  // namespace

// Klynaa's four-step event flow (issue 6): created -> nearby workers notified;
// accepted -> customer notified; delivered -> escrow released after the hold and
// the worker notified; the daily schedule -> report posted and admins notified.
TEST_CASE("the four-step flow: created, accepted, delivered and auto-released, daily report", "[e2e][flow]") {
  temp_dir d;
  write_file(d / "klynaa.toml", "[[schedule]]\nname = \"daily-report\"\ncron = \"" + cron_minutes_ago(1) +
                                    "\"\nfunction = \"generateDailyReport\"\n");
  cluster_under_test c({{"KLYNAA_ESCROW_HOLD_SECONDS", "2"}, {"KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "600"}},
                       {"--config", d / "klynaa.toml"});
  // 1. created: the workers near Lagos whose service radius reaches the pickup.
  auto created = c.django->post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5254}, {"lng", 3.3812},
                                                       {"price", 1500}, {"publish", true}});
  REQUIRE(created["ingress"]["status"] == "accepted");
  int id = created["pickup"]["id"];
  auto pid = std::to_string(id);
  std::vector<json> lines;
  bool notified = wait_for([&] {
    lines = outbox(c.klynaa->data_dir());
    return pushed(lines, "pickup_requested", id).size() >= 4;
  }, 30000ms);
  INFO(c.klynaa->log());
  REQUIRE(notified);
  // 201-204 are within 5 km and their own radius; 205 (8.5 km, radius 3 km) is not.
  CHECK(pushed(lines, "pickup_requested", id) ==
        std::multiset<std::string>{"fcm-worker-201", "fcm-worker-202", "fcm-worker-203", "fcm-worker-204"});

  // 2. accepted: the customer (two devices).
  auto acc = c.django->post("/api/demo/pickups/" + pid + "/accept/", {{"worker_id", 202}});
  REQUIRE(acc["ingress"]["status"] == "accepted");
  REQUIRE(wait_for([&] {
    lines = outbox(c.klynaa->data_dir());
    return pushed(lines, "pickup_accepted", id).size() >= 2;
  }, 30000ms));
  CHECK(pushed(lines, "pickup_accepted", id) ==
        std::multiset<std::string>{"apns-customer-101", "fcm-customer-101"});

  // 3. delivered: the customer hears of it; the escrow is released after the
  // 2 s hold without a confirmation, and the worker hears of the release once.
  auto del = c.django->post("/api/demo/pickups/" + pid + "/deliver/", json::object());
  REQUIRE(del["ingress"]["status"] == "accepted");
  const auto delivered_at = std::chrono::steady_clock::now();
  REQUIRE(wait_for([&] {
    lines = outbox(c.klynaa->data_dir());
    return pushed(lines, "escrow_released", id).size() >= 1;
  }, 30000ms));
  CHECK(std::chrono::steady_clock::now() - delivered_at >= 1500ms);  // not before the hold
  CHECK(pushed(lines, "pickup_delivered", id) ==
        std::multiset<std::string>{"apns-customer-101", "fcm-customer-101"});
  CHECK(pushed(lines, "escrow_released", id) == std::multiset<std::string>{"fcm-worker-202"});
  auto state = c.django->state();
  int releases = 0;
  for (auto& r : state["escrow_releases"])
    if (r["pickup_id"] == id) {
      ++releases;
      CHECK(r["reason"] == "auto_release");
    }
  CHECK(releases == 1);

  // 4. The daily schedule (its time passed a minute ago, within the misfire
  // grace): one report posted to Django, every admin notified.
  REQUIRE(wait_for([&] {
    lines = outbox(c.klynaa->data_dir());
    return pushed(lines, "daily_report").size() >= 3;
  }, 30000ms));
  CHECK(pushed(lines, "daily_report") ==
        std::multiset<std::string>{"fcm-admin-1", "fcm-admin-2", "fcm-admin-3"});
  state = c.django->state();
  int daily = 0;
  for (auto& r : state["reports"])
    if (r["kind"] == "daily") ++daily;
  CHECK(daily == 1);
  CHECK(c.all_done({"sendPickupNotification", "processEscrowRelease", "notifyNearbyWorkers",
                    "generateDailyReport"}));
  CHECK(c.stats().value("dead_letters", -1) == 0);
}

TEST_CASE("a duplicate publish runs nothing twice", "[e2e]") {
  cluster_under_test c;
  auto acc = accepted_pickup(*c.django);
  int id = acc["pickup"]["id"];
  REQUIRE(wait_for([&] { return outcome_count(c.stats(), "sendPickupNotification", "ok") == 1; }, 30000ms));
  auto before = outbox(c.klynaa->data_dir()).size();
  CHECK(before == 2);  // customer 101 has two devices
  zmq::context_t ctx;
  raw_client cl(ctx, c.klynaa->ingress());
  auto ev = acc["event"];
  auto r = cl.call(publish_frame(ev["id"], "pickup.accepted", ev["data"]));
  REQUIRE(r);
  CHECK(r->status == reply_status::duplicate);
  std::this_thread::sleep_for(1000ms);
  CHECK(outbox(c.klynaa->data_dir()).size() == before);
  CHECK(outcome_count(c.stats(), "sendPickupNotification", "ok") == 1);
  (void)id;
}

TEST_CASE("the two invoke commands of the old Lambda layer work", "[e2e]") {
  cluster_under_test c;
  auto acc = accepted_pickup(*c.django);
  auto pid = std::to_string(acc["pickup"]["id"].get<int>());
  auto [c1, o1] = run_cli({"invoke", "sendPickupNotification", "--ingress", c.klynaa->ingress(), "--data",
                           R"({"pickup_id": )" + pid + R"(, "notification_type": "pickup_requested", "user_type": "worker"})"});
  INFO(o1);
  CHECK(c1 == 0);
  CHECK(o1.find("\"ok\"") != std::string::npos);
  CHECK(o1.find("\"sent\"") != std::string::npos);
  auto [c2, o2] = run_cli({"invoke", "processEscrowRelease", "--ingress", c.klynaa->ingress(), "--data",
                           R"({"pickup_id": )" + pid + R"(, "release_reason": "customer_confirmed"})"});
  INFO(o2);
  CHECK(c2 == 0);
  CHECK(o2.find("\"released\"") != std::string::npos);
  // Again: Django says already_released, which is success too.
  auto [c3, o3] = run_cli({"invoke", "processEscrowRelease", "--ingress", c.klynaa->ingress(), "--data",
                           R"({"pickup_id": )" + pid + R"(, "release_reason": "admin"})"});
  CHECK(c3 == 0);
  CHECK(o3.find("\"already_released\"") != std::string::npos);
}

namespace {
/// Runs SQL on a stopped broker's store (to make its records look old).
void exec_sql(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(db_path.c_str(), &db) == SQLITE_OK);
  char* msg = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &msg);
  INFO((msg ? msg : ""));
  sqlite3_free(msg);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}
}  // namespace

TEST_CASE("cleanupData prunes finished jobs and dedup keys past store.dedup_retention_days", "[e2e][retention]") {
  cluster_under_test c;
  auto acc = accepted_pickup(*c.django);
  auto ev = acc["event"];
  REQUIRE(wait_for([&] { return outcome_count(c.stats(), "sendPickupNotification", "ok") == 1; }, 30000ms));
  zmq::context_t ctx;
  {
    raw_client cl(ctx, c.klynaa->ingress());
    auto dup = cl.call(publish_frame(ev["id"], "pickup.accepted", ev["data"]));
    REQUIRE(dup);
    CHECK(dup->status == reply_status::duplicate);  // within retention: a duplicate
  }
  // Eight days pass for everything stored so far.
  c.klynaa->stop();
  exec_sql(c.klynaa->data_dir() + "/broker.db",
           "UPDATE jobs SET updated_ms = updated_ms - 8 * 86400000; "
           "UPDATE requests SET accepted_ms = accepted_ms - 8 * 86400000;");
  c.klynaa->start();
  auto [code, out] = run_cli({"invoke", "cleanupData", "--ingress", c.klynaa->ingress(), "--data",
                              R"({"older_than_days": 90})"});
  INFO(out);
  REQUIRE(code == 0);
  auto reply = json::parse(out.substr(out.find('{')), nullptr, false);
  REQUIRE(reply.is_object());
  // The accepted event's request and its notification job are gone (2 rows at least).
  CHECK(reply["result"]["pruned"].get<int64_t>() >= 2);
  CHECK(reply["result"].contains("deleted"));
  // The old id is no longer a duplicate: its dedup key was pruned.
  raw_client cl(ctx, c.klynaa->ingress());
  auto again = cl.call(publish_frame(ev["id"], "pickup.accepted", ev["data"]));
  REQUIRE(again);
  CHECK(again->status == reply_status::accepted);
  // The cleanupData job itself and its request are recent: kept.
  auto [code2, out2] = run_cli({"invoke", "cleanupData", "--ingress", c.klynaa->ingress(), "--data",
                                R"({"older_than_days": 90})"});
  INFO(out2);
  REQUIRE(code2 == 0);
  auto reply2 = json::parse(out2.substr(out2.find('{')), nullptr, false);
  CHECK(reply2["result"]["pruned"] == 0);
}

TEST_CASE("an escrow release for an unknown pickup ends failed and dead", "[e2e]") {
  cluster_under_test c;
  auto [code, out] = run_cli({"invoke", "processEscrowRelease", "--ingress", c.klynaa->ingress(), "--data",
                              R"({"pickup_id": 999999, "release_reason": "admin"})"});
  INFO(out);
  CHECK(code == 1);
  CHECK(out.find("\"failed\"") != std::string::npos);
  CHECK(out.find("\"permanent\"") != std::string::npos);
  CHECK(out.find("404") != std::string::npos);
  CHECK(wait_for([&] { return c.stats().value("dead_letters", 0) == 1; }, 10000ms));
}

TEST_CASE("with Django stopped for a few seconds, jobs are retried and complete", "[e2e]") {
  cluster_under_test c;
  c.django->stop();
  zmq::context_t ctx;
  raw_client cl(ctx, c.klynaa->ingress());
  for (int i = 0; i < 5; ++i) {
    auto r = cl.call(publish_frame("down-" + std::to_string(i), "pickup.accepted",
                                   {{"pickup_id", 1}, {"customer_id", 101}, {"worker_id", 201}}));
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
  }
  bool retried = wait_for([&] { return outcome_count(c.stats(), "sendPickupNotification", "retry") > 0; }, 15000ms);
  CHECK(retried);
  // The waiting retries are visible with their attempts and next run: /stats
  // and `klynaa stats`; the failures with their errors too.
  json s;
  CHECK(wait_for([&] {
    s = c.stats();
    return !s.value("retrying", json::array()).empty();
  }, 10000ms));
  INFO(s.dump());
  if (!s.value("retrying", json::array()).empty()) {
    auto r = s["retrying"][0];
    CHECK(r["function"] == "sendPickupNotification");
    CHECK(r["attempts"].get<int>() >= 1);
    CHECK(r["next_run_ms"].get<int64_t>() > 0);
  }
  REQUIRE(!s.value("recent_failures", json::array()).empty());
  CHECK(s["recent_failures"].back()["outcome"] == "retry");
  auto [code, table] = run_cli({"stats", "--admin", c.klynaa->endpoints()["admin"].get<std::string>()});
  INFO(table);
  CHECK(code == 0);
  CHECK(c.klynaa->log().find("job will retry") != std::string::npos);
  std::this_thread::sleep_for(1000ms);
  c.django->restart(c.klynaa->ingress());
  CHECK(c.all_done({"sendPickupNotification"}, 60000ms));
  CHECK(outcome_count(c.stats(), "sendPickupNotification", "ok") == 5);
  CHECK(c.stats().value("dead_letters", -1) == 0);
}

TEST_CASE("kill -9 during a burst of 1000 events: after restart every job is done", "[e2e][durability]") {
  cluster_under_test c;
  zmq::context_t ctx;
  std::set<std::string> acked;
  {
    raw_client cl(ctx, c.klynaa->ingress());
    for (int i = 0; i < 1000; ++i)
      cl.send_frames({"", publish_frame("burst-" + std::to_string(i), "pickup.accepted",
                                        {{"pickup_id", 1 + i % 2}, {"customer_id", 101}, {"worker_id", 201}})});
    while (acked.size() < 600) {
      auto r = cl.recv_frames(20000ms);
      REQUIRE(!r.empty());
      auto rep = klynaa::protocol::decode_reply(r.back().data(), r.back().size());
      REQUIRE(rep);
      if (rep->status == reply_status::accepted) acked.insert(*rep->id);
    }
  }
  c.klynaa->kill9_and_restart();
  // Clients resend what was not acknowledged; dedup makes the rest harmless.
  raw_client cl(ctx, c.klynaa->ingress());
  for (int i = 0; i < 1000; ++i)
    cl.send_frames({"", publish_frame("burst-" + std::to_string(i), "pickup.accepted",
                                      {{"pickup_id", 1 + i % 2}, {"customer_id", 101}, {"worker_id", 201}})});
  for (int i = 0; i < 1000; ++i) {
    auto r = cl.recv_frames(20000ms);
    REQUIRE(!r.empty());
    auto rep = klynaa::protocol::decode_reply(r.back().data(), r.back().size());
    REQUIRE(rep);
    if (acked.count(*rep->id)) CHECK(rep->status == reply_status::duplicate);
  }
  REQUIRE(c.all_done({"sendPickupNotification"}, 240000ms));
  std::set<std::string> jobs;
  for (auto& l : outbox(c.klynaa->data_dir())) jobs.insert(l["job_id"].get<std::string>());
  for (int i = 0; i < 1000; ++i) {
    INFO(i);
    CHECK(jobs.count("burst-" + std::to_string(i) + "#1") == 1);
  }
}

TEST_CASE("metrics are valid Prometheus text and carry the nodes' counters labelled node", "[e2e][metrics]") {
  cluster_under_test c;
  auto acc = accepted_pickup(*c.django);
  REQUIRE(acc["ingress"]["status"] == "accepted");
  auto addr = c.klynaa->endpoints()["admin"].get<std::string>();
  auto colon = addr.rfind(':');
  httplib::Client http(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
  std::string text;
  REQUIRE(wait_for([&] {  // nodes report every 5 s
    auto r = http.Get("/metrics");
    if (!r) return false;
    text = r->body;
    return text.find("klynaa_downstream_requests_total{node=") != std::string::npos &&
           text.find("klynaa_node_jobs_total{node=") != std::string::npos;
  }, 20000ms));
  INFO(text);
  static const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? -?([0-9.]+(e[+-]?[0-9]+)?|\+Inf)$)");
  std::set<std::string> typed;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) {
    if (line.rfind("# TYPE ", 0) == 0) {
      auto name = line.substr(7, line.find(' ', 7) - 7);
      typed.insert(name);
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    INFO(line);
    CHECK(std::regex_match(line, sample));
    auto name = line.substr(0, line.find_first_of("{ "));
    for (auto suffix : {"_bucket", "_sum", "_count"})
      if (name.size() > strlen(suffix) && name.compare(name.size() - strlen(suffix), std::string::npos, suffix) == 0 &&
          !typed.count(name))
        name = name.substr(0, name.size() - strlen(suffix));
    CHECK(typed.count(name) == 1);  // every sample belongs to a declared family
  }
  for (auto family : {"klynaa_jobs_total", "klynaa_job_duration_seconds", "klynaa_queue_depth",
                      "klynaa_dead_letters", "klynaa_nodes", "klynaa_ingress_requests_total",
                      "klynaa_downstream_requests_total"})
    CHECK(typed.count(family) == 1);
  CHECK(text.find("# TYPE klynaa_job_duration_seconds histogram") != std::string::npos);
  // the node's adaptive limits (docs/reliability.md), from the node's stats
  CHECK(text.find("klynaa_downstream_limit{node=") != std::string::npos);
  CHECK(text.find("klynaa_downstream_latency_seconds{node=") != std::string::npos);
  CHECK(text.find("klynaa_job_duration_seconds_bucket{function=\"sendPickupNotification\",le=\"+Inf\"}") !=
        std::string::npos);
}
