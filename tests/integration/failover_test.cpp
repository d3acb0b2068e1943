// Standby brokers under load (issue 10, docs/deployment.md): a real PostgreSQL
// (tests/broker/pg_server.hpp), two `klynaa broker` processes on it, three
// `klynaa node` processes given both cluster endpoints, and the reference
// Django. A burst of mixed events about delivered pickups goes to the active
// broker; it is killed with SIGKILL in the middle; the standby takes over; the
// client sends everything again to the broker list (as the Python client does).
// Asserted: every event accepted before the kill is a duplicate afterwards
// (accepted means committed), every job of every event completes (nothing
// unfinished or dead in the store), the three nodes registered with the new
// broker, every notification job pushed, per-pickup order held, and Django
// released each pickup's escrow exactly once.
#include <libpq-fe.h>

#include <iostream>

#include "../broker/pg_server.hpp"
#include "faults_support.hpp"

using namespace klynaa::test;
using namespace klynaa::test::faults;

namespace {

// Long enough that renewals never miss it on a loaded CI machine (ASan, -j2):
// a renewal that fails for 2/3 of the lease stops the broker.
constexpr int64_t lease_ms = 4000;

/// The first column of every row of `sql` (empty on error).
std::vector<std::string> pg_column(const std::string& url, const std::string& sql) {
  std::vector<std::string> out;
  PGconn* c = PQconnectdb(url.c_str());
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
      for (int i = 0; i < PQntuples(r); ++i) out.emplace_back(PQgetvalue(r, i, 0));
    PQclear(r);
  }
  PQfinish(c);
  return out;
}

/// One number from the test's PostgreSQL (-1 on error).
int64_t pg_count(const std::string& url, const std::string& sql) {
  PGconn* c = PQconnectdb(url.c_str());
  int64_t n = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) n = std::atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
  }
  PQfinish(c);
  return n;
}

json stats_of(const klynaa_server& b) {
  auto info = json::parse(read_file(b.data_dir() + "/broker.json"), nullptr, false);
  if (!info.is_object() || !info.contains("admin")) return json();
  const auto addr = info["admin"].get<std::string>();
  const auto colon = addr.rfind(':');
  httplib::Client c(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
  auto r = c.Get("/stats");
  return r && r->status == 200 ? json::parse(r->body, nullptr, false) : json();
}

std::string role_of(const klynaa_server& b) {
  auto info = json::parse(read_file(b.data_dir() + "/broker.json"), nullptr, false);
  return info.is_object() ? info.value("role", std::string()) : std::string();
}

}  // namespace

namespace {

/// The environment of the failover test's brokers and nodes.
std::map<std::string, std::string> failover_env(django_app& django, const std::string& url) {
  return {
      {"DJANGO_API_URL", django.url()},
      {"DJANGO_API_KEY", "test-key"},
      {"KLYNAA_STORE_BACKEND", "postgres"},
      {"KLYNAA_STORE_URL", url},
      {"KLYNAA_STORE_LEASE_MS", std::to_string(lease_ms)},
      {"KLYNAA_RETRY_BASE_DELAY_MS", "100"},
      {"KLYNAA_RETRY_MAX_DELAY_MS", "1000"},
      {"KLYNAA_RETRY_MAX_ATTEMPTS", "40"},
      {"KLYNAA_ESCROW_HOLD_SECONDS", "3600"},
      {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"},
      {"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "1500"},
  };
}

/// Django released each pickup's escrow exactly once.
void check_escrow_once(django_app& django, const std::vector<int>& pickups) {
  auto state = django.state();
  std::map<int, int> releases, released_calls;
  for (auto& r : state["escrow_releases"]) ++releases[r["pickup_id"].get<int>()];
  for (auto& c : state["escrow_calls"])
    if (c.value("status", "") == "released") ++released_calls[c["pickup_id"].get<int>()];
  for (int id : pickups) {
    INFO("pickup " << id);
    CHECK(releases[id] == 1);
    CHECK(released_calls[id] == 1);
  }
}

/// The pushes the nodes wrote (their outbox files) against the jobs in the store.
void check_pushes(const std::string& url, const temp_dir& nodes_dir, const std::vector<int>& pickups) {
  // Every notification job that is done pushed (at least once: a job running
  // on a node when its broker died runs again).
  std::set<std::string> pushed;
  for (int i = 1; i <= 3; ++i)
    for (auto& l : outbox(nodes_dir / ("node-" + std::to_string(i))))
      if (l.is_object()) pushed.insert(l.value("job_id", ""));
  const auto notifications =
      pg_column(url, "SELECT id FROM (SELECT * FROM klynaa.jobs UNION ALL SELECT * FROM klynaa.jobs_done) j "
                     "WHERE function = 'sendPickupNotification' AND state = 3");
  CHECK(notifications.size() >= 60);  // accepted and delivered, per pickup
  for (auto& id : notifications) {
    INFO("notification job " << id);
    CHECK(pushed.count(id) == 1);
  }

  // Per-pickup order held across the failover: the first push of each event
  // comes after the first push of the one before it (a job re-run after the
  // failover may push again, later; never earlier than its predecessor).
  std::map<int, std::map<std::string, std::string>> first_push;  // pickup -> type -> earliest ts
  for (int i = 1; i <= 3; ++i)
    for (auto& l : outbox(nodes_dir / ("node-" + std::to_string(i)))) {
      if (!l.is_object() || !l["data"].is_object()) continue;
      const int id = l["data"].value("pickup_id", 0);
      auto& t = first_push[id][l.value("notification_type", "")];
      const auto ts = l.value("ts", "");
      if (t.empty() || ts < t) t = ts;  // ISO 8601 UTC with ms: text order is time order
    }
  for (int id : pickups) {
    INFO("pickup " << id);
    auto& t = first_push[id];
    REQUIRE(!t["pickup_accepted"].empty());
    REQUIRE(!t["pickup_delivered"].empty());
    CHECK(t["pickup_accepted"] <= t["pickup_delivered"]);
    if (!t["escrow_released"].empty()) CHECK(t["pickup_delivered"] <= t["escrow_released"]);
  }

}

}  // namespace

TEST_CASE("failover under load: kill -9 of the active broker with three nodes and Django", "[ha][postgres][faults]") {
  auto& pg = pg_server::get();
  const auto url = pg.url(pg.fresh_database());
  django_app django;
  const auto env = failover_env(django, url);
  auto env_a = env, env_b = env;
  env_a["KLYNAA_STORE_BROKER_NAME"] = "broker-a";
  env_b["KLYNAA_STORE_BROKER_NAME"] = "broker-b";
  klynaa_server a("broker", env_a);
  REQUIRE(role_of(a) == "active");
  klynaa_server b("broker", env_b);
  REQUIRE(role_of(b) == "standby");
  const std::string clusters = a.cluster() + "," + b.cluster();
  const std::string ingresses = a.ingress() + "," + b.ingress();

  temp_dir nodes_dir;
  std::vector<std::unique_ptr<process>> nodes;
  for (int i = 1; i <= 3; ++i) nodes.push_back(start_node(nodes_dir, "node-" + std::to_string(i), clusters, env));
  REQUIRE(wait_for([&] { return stats_of(a).value("nodes", json::array()).size() == 3; }, 20000ms));

  auto burst_ = make_burst(django, 30, "fo-");
  const size_t half = burst_.events.size() / 2;
  // The first half, answered by the active broker.
  auto first = send_pipelined(a.ingress(), burst_.slice(0, half));
  INFO(a.log().substr(a.log().size() > 4000 ? a.log().size() - 4000 : 0));
  REQUIRE(first.size() == half);
  for (auto& [id, st] : first) CHECK(st == reply_status::accepted);
  // The second half pipelined, and the broker killed after a few replies.
  auto second = send_pipelined(a.ingress(), burst_.slice(half, burst_.events.size()), 10);
  a.proc().kill(SIGKILL);
  REQUIRE(a.proc().wait(5000ms));
  const auto killed = std::chrono::steady_clock::now();
  const bool took = wait_for([&] { return role_of(b) == "active"; }, std::chrono::milliseconds(lease_ms + 10000));
  INFO(b.log().substr(b.log().size() > 4000 ? b.log().size() - 4000 : 0));
  REQUIRE(took);
  const auto failover_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed).count();

  // The client sends every event again to the list of brokers (the ids make it
  // safe): what the old broker accepted is a duplicate on the new one.
  std::map<std::string, reply_status> again;
  for (int round = 0; round < 5 && again.size() < burst_.events.size(); ++round) {
    std::vector<event> todo;
    for (auto& e : burst_.events)
      if (!again.count(e.id)) todo.push_back(e);
    for (auto& [id, st] : send_pipelined(b.ingress(), todo)) again[id] = st;
  }
  REQUIRE(again.size() == burst_.events.size());
  for (auto& [id, st] : first) {
    INFO(id);
    CHECK(again[id] == reply_status::duplicate);
  }
  for (auto& [id, st] : second)
    if (st == reply_status::accepted) {
      INFO(id);
      CHECK(again[id] == reply_status::duplicate);
    }

  // Every node finds the new active broker.
  CHECK(wait_for([&] { return stats_of(b).value("nodes", json::array()).size() == 3; }, 20000ms));

  // Every job of every event completes: nothing unfinished or dead.
  const bool done = wait_for([&] { return pg_count(url, "SELECT count(*) FROM klynaa.jobs WHERE state < 3") == 0; },
                             60000ms);
  INFO(stats_of(b).dump());
  REQUIRE(done);
  CHECK(pg_count(url, "SELECT count(*) FROM klynaa.jobs WHERE state = 4") == 0);
  CHECK(pg_count(url, "SELECT count(*) FROM klynaa.requests") == static_cast<int64_t>(burst_.events.size()));
  // Finished jobs live in klynaa.jobs_done (broker/pg_sql.cpp, move_finished).
  const auto jobs = pg_count(url, "SELECT (SELECT count(*) FROM klynaa.jobs) + (SELECT count(*) FROM klynaa.jobs_done)");
  CHECK(jobs >= static_cast<int64_t>(burst_.events.size()));

  check_escrow_once(django, burst_.pickups);
  check_pushes(url, nodes_dir, burst_.pickups);

  std::cout << "FIGURES failover " << json{{"failover_ms", failover_ms}, {"events", burst_.events.size()},
                                           {"jobs", jobs}, {"accepted_before_kill", first.size() + second.size()}}.dump()
            << std::endl;
  for (auto& n : nodes) stop_cleanly(*n, "node");
}
