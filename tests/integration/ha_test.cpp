// Standby brokers on one PostgreSQL (issue 10, docs/deployment.md "HA brokers on
// PostgreSQL"): real `klynaa broker` processes sharing a real PostgreSQL 15
// (tests/broker/pg_server.hpp). One holds the lease and is active; the other is
// a standby that sends clients and nodes elsewhere, and takes over when the
// active one dies or freezes past its lease. A frozen broker that wakes up
// fail-stops (exit 3) without accepting anything.
#include <httplib.h>

#include "../broker/pg_server.hpp"
#include "fake_node.hpp"
#include "protocol/cluster.hpp"
#include "support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;
namespace cl = klynaa::protocol::cluster;

namespace {

// Long enough that renewals never miss it on a loaded CI machine (ASan, -j2):
// a renewal that fails for 2/3 of the lease stops the broker.
constexpr int64_t lease_ms = 4000;

std::map<std::string, std::string> pg_env(const std::string& url, const std::string& name) {
  return {{"KLYNAA_STORE_BACKEND", "postgres"},
          {"KLYNAA_STORE_URL", url},
          {"KLYNAA_STORE_LEASE_MS", std::to_string(lease_ms)},
          {"KLYNAA_STORE_BROKER_NAME", name},
          {"KLYNAA_LOG_LEVEL", "debug"}};
}

/// A fresh database on the test PostgreSQL, as store.url.
std::string fresh_store_url() {
  auto& pg = pg_server::get();
  return pg.url(pg.fresh_database());
}

json broker_json(const klynaa_server& srv) {
  return json::parse(read_file(srv.data_dir() + "/broker.json"), nullptr, false);
}

std::string role_of(const klynaa_server& srv) {
  auto j = broker_json(srv);
  return j.is_object() ? j.value("role", std::string()) : std::string();
}

std::pair<int, std::string> http_get(const std::string& addr, const std::string& path) {
  auto colon = addr.rfind(':');
  httplib::Client c(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
  auto r = c.Get(path.c_str());
  return r ? std::make_pair(r->status, r->body) : std::make_pair(0, std::string());
}

/// Publishes and returns the reply (nullopt: no answer within `timeout`).
/// Two brokers on one fresh store: `a`, started first, holds the lease; `b` is
/// the standby.
struct broker_pair {
  std::string url = fresh_store_url();
  klynaa_server a{"broker", pg_env(url, "broker-a")};
  klynaa_server b{"broker", pg_env(url, "broker-b")};
  broker_pair() {
    REQUIRE(role_of(a) == "active");
    REQUIRE(role_of(b) == "standby");
  }
};

std::optional<klynaa::protocol::reply> publish(zmq::context_t& ctx, const std::string& ingress,
                                               const std::string& id, int worker,
                                               std::chrono::milliseconds timeout = 10000ms) {
  raw_client c(ctx, ingress);
  return c.call(publish_frame(id, "worker.location", location(worker)), true, timeout);
}

}  // namespace

TEST_CASE("two brokers on one PostgreSQL - one is active, the standby sends everyone elsewhere",
          "[ha][postgres]") {
  broker_pair pair;
  auto& a = pair.a;
  auto& b = pair.b;
  INFO(b.log());

  zmq::context_t ctx;
  // The active one accepts; the standby answers ping, refuses the rest.
  auto acc = publish(ctx, a.ingress(), "ha-a-1", 1);
  REQUIRE(acc);
  CHECK(acc->status == reply_status::accepted);
  raw_client pinger(ctx, b.ingress());
  auto pong = pinger.call(ping_frame());
  REQUIRE(pong);
  CHECK(pong->status == reply_status::pong);
  auto refused = publish(ctx, b.ingress(), "ha-b-1", 2);
  REQUIRE(refused);
  CHECK(refused->status == reply_status::rejected);
  REQUIRE(refused->error);
  CHECK(refused->error->code == "overloaded");
  CHECK(refused->error->message == "standby broker: the active broker holds the lease; try another endpoint");
  CHECK(refused->retry_after_ms == lease_ms / 2);
  CHECK(refused->id == std::optional<std::string>("ha-b-1"));

  // A node's READY gets BYE with reason standby.
  zmq::socket_t node(ctx, zmq::socket_type::dealer);
  node.set(zmq::sockopt::linger, 0);
  node.connect(b.cluster());
  auto ready = cl::encode(cl::ready{"n1", {"geo"}, 1});
  node.send(zmq::buffer(ready), zmq::send_flags::none);
  zmq::pollitem_t items[] = {{static_cast<void*>(node), 0, ZMQ_POLLIN, 0}};
  REQUIRE(zmq::poll(items, 1, 10000ms) > 0);
  zmq::message_t m;
  REQUIRE(node.recv(m, zmq::recv_flags::none));
  auto msg = cl::decode(m.data(), m.size());
  REQUIRE(msg);
  REQUIRE(std::holds_alternative<cl::bye>(*msg));
  CHECK(std::get<cl::bye>(*msg).reason == "standby");

  // Admin: the standby is not healthy (out of a load balancer), but alive.
  const auto b_admin = broker_json(b)["admin"].get<std::string>();
  auto [hs, hbody] = http_get(b_admin, "/healthz");
  CHECK(hs == 503);
  CHECK_THAT(hbody, Catch::Contains("standby"));
  CHECK(http_get(b_admin, "/livez").first == 200);
  auto stats = json::parse(http_get(b_admin, "/stats").second, nullptr, false);
  CHECK(stats.value("role", "") == "standby");
  CHECK(http_get(a.endpoints()["admin"].get<std::string>(), "/healthz").first == 200);
  auto a_stats = json::parse(http_get(a.endpoints()["admin"].get<std::string>(), "/stats").second, nullptr, false);
  CHECK(a_stats.value("role", "") == "active");

  CHECK_THAT(b.log(), Catch::Contains("standby: another broker holds the lease"));
  CHECK_THAT(b.log(), Catch::Contains("broker-a"));
  CHECK_THAT(a.log(), Catch::Contains("took the lease"));

  // A clean stop releases the lease: the standby takes over at its next try,
  // not lease_ms later.
  a.proc().kill(SIGTERM);
  auto code = a.proc().wait(15000ms);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK_THAT(a.log(), Catch::Contains("released the lease"));
  const auto stopped = std::chrono::steady_clock::now();
  REQUIRE(wait_for([&] { return role_of(b) == "active"; }, 10000ms));
  CHECK(std::chrono::steady_clock::now() - stopped < std::chrono::milliseconds(lease_ms));
  auto now_accepted = publish(ctx, b.ingress(), "ha-b-1", 2);
  REQUIRE(now_accepted);
  CHECK(now_accepted->status == reply_status::accepted);
}

TEST_CASE("kill -9 of the active broker - the standby takes over, accepted ids are duplicates and run",
          "[ha][postgres]") {
  broker_pair pair;
  auto& a = pair.a;
  auto& b = pair.b;
  const auto b_ingress = b.ingress(), b_cluster = b.cluster();

  zmq::context_t ctx;
  constexpr int n = 12;
  std::map<std::string, std::vector<std::string>> jobs;
  for (int i = 0; i < n; ++i) {
    auto id = "ha-kill-" + std::to_string(i);
    auto r = publish(ctx, a.ingress(), id, 100 + i);
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
    jobs[id] = r->jobs;
  }

  a.proc().kill(SIGKILL);
  REQUIRE(a.proc().wait(5000ms));
  const auto killed = std::chrono::steady_clock::now();
  bool took = wait_for([&] { return role_of(b) == "active" && broker_json(b).value("pid", 0) == b.proc().pid(); },
                       std::chrono::milliseconds(lease_ms + 8000));
  INFO(b.log());
  REQUIRE(took);
  const auto failover_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed).count();
  CHECK(failover_ms <= lease_ms + 5000);
  // Same endpoints as while standby: clients and nodes need no new address.
  CHECK(broker_json(b)["ingress"] == b_ingress);
  CHECK(broker_json(b)["cluster"][0] == b_cluster);
  CHECK_THAT(b.log(), Catch::Contains("took the lease"));

  for (auto& [id, ids] : jobs) {
    auto r = publish(ctx, b_ingress, id, 1);
    REQUIRE(r);
    CHECK(r->status == reply_status::duplicate);
    CHECK(r->jobs == ids);
  }

  // Their jobs run on a node connected to the new active broker.
  temp_dir nd;
  process node({KLYNAA_BINARY, "node", "--broker", b_cluster, "--actors", "geo", "--data-dir", nd / "data",
                "--name", "ha-node"},
               {{"DJANGO_API_URL", "http://127.0.0.1:9"}, {"KLYNAA_ADMIN_BIND", "127.0.0.1:0"}}, nd / "node.log");
  const auto b_admin = broker_json(b)["admin"].get<std::string>();
  bool ran = wait_for([&] {
    auto s = json::parse(http_get(b_admin, "/stats").second, nullptr, false);
    if (!s.is_object() || !s.contains("functions") || !s["functions"].contains("updateWorkerLocation")) return false;
    auto& f = s["functions"]["updateWorkerLocation"];
    return f.contains("outcomes") && f["outcomes"].value("ok", int64_t{0}) >= n;
  }, 30000ms);
  INFO(node.log());
  CHECK(ran);
  node.kill(SIGTERM);
  node.wait(15000ms);
  check_no_sanitizer_report(node.log());
}

TEST_CASE("a broker frozen past its lease fail-stops with exit 3 when resumed and accepts nothing",
          "[ha][postgres]") {
  broker_pair pair;
  auto& a = pair.a;
  auto& b = pair.b;
  const auto a_ingress = a.ingress();

  zmq::context_t ctx;
  auto before = publish(ctx, a_ingress, "ha-stop-before", 1);
  REQUIRE(before);
  REQUIRE(before->status == reply_status::accepted);

  a.proc().kill(SIGSTOP);
  bool took = wait_for([&] { return role_of(b) == "active"; }, std::chrono::milliseconds(lease_ms + 8000));
  INFO(b.log());
  if (!took) a.proc().kill(SIGCONT);
  REQUIRE(took);

  // Requests wait in a's socket buffers while it is frozen; then it resumes.
  std::vector<std::unique_ptr<raw_client>> clients;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(std::make_unique<raw_client>(ctx, a_ingress));
    clients.back()->send_frames({"", publish_frame("ha-stop-after-" + std::to_string(i), "worker.location", location(i + 1))});
  }
  a.proc().kill(SIGCONT);
  for (int i = 5; i < 10; ++i) {
    clients.push_back(std::make_unique<raw_client>(ctx, a_ingress));
    clients.back()->send_frames({"", publish_frame("ha-stop-after-" + std::to_string(i), "worker.location", location(i + 1))});
  }
  for (auto& c : clients) {
    auto frames = c->recv_frames(3000ms);
    if (frames.empty()) continue;  // the process was gone before answering: fine
    auto r = klynaa::protocol::decode_reply(frames.back().data(), frames.back().size());
    REQUIRE(r);
    CHECK(r->status != reply_status::accepted);
    CHECK(r->status != reply_status::duplicate);
  }
  auto code = a.proc().wait(10000ms);
  INFO(a.log());
  REQUIRE(code);
  CHECK(*code == 3);
  CHECK_THAT(a.log(), Catch::Contains("lost the lease: stopping at once (a standby takes over)"));

  // Nothing a sent after it froze was stored: the new active broker accepts
  // every one of them as new, and knows the one from before.
  for (int i = 0; i < 10; ++i) {
    auto r = publish(ctx, b.ingress(), "ha-stop-after-" + std::to_string(i), i + 1);
    REQUIRE(r);
    INFO((r->error ? r->error->message : std::string()));
    CHECK(r->status == reply_status::accepted);
  }
  auto again = publish(ctx, b.ingress(), "ha-stop-before", 1);
  REQUIRE(again);
  CHECK(again->status == reply_status::duplicate);
}

TEST_CASE("store migrate copies a SQLite store into an empty PostgreSQL and a broker serves it",
          "[ha][postgres][migrate]") {
  zmq::context_t ctx;
  temp_dir keep;
  const std::string data = keep / "sqlite-data";
  std::string dead_job;
  std::vector<std::string> loc2_jobs;
  {
    klynaa_server src("broker", {}, {}, data);
    // A broker holds the data dir: refused.
    auto [busy, busy_out] = run_cli({"store", "migrate", "--data-dir", data, "--to", fresh_store_url()});
    INFO(busy_out);
    CHECK(busy == 1);
    CHECK_THAT(busy_out, Catch::Contains("a broker is using the data dir"));

    fake_node node(ctx, src.cluster(), "script", {"escrow", "geo"}, 1);
    auto r = publish(ctx, src.ingress(), "mig-loc-1", 1);
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
    auto j = node.next_job();
    REQUIRE(j);
    node.finish(*j, "ok");  // done
    raw_client c(ctx, src.ingress());
    auto conf = c.call(publish_frame("mig-conf", "pickup.confirmed", {{"pickup_id", 7}, {"customer_id", 101}}));
    REQUIRE(conf);
    REQUIRE(conf->status == reply_status::accepted);
    auto e = node.next_job();
    REQUIRE(e);
    CHECK(e->function == "processEscrowRelease");
    dead_job = e->job_id;
    node.finish(*e, "permanent", "http_404", "Django answered 404: no such pickup", 404);  // dead, with one attempt of history
    REQUIRE(wait_for([&] {
      auto addr = src.endpoints()["admin"].get<std::string>();
      auto s = json::parse(http_get(addr, "/stats").second, nullptr, false);
      return s.is_object() && s.value("dead_letters", 0) >= 1;
    }, 10000ms));
    node.send(cl::bye{});
    auto r2 = publish(ctx, src.ingress(), "mig-loc-2", 2);  // stays ready: no geo node now
    REQUIRE(r2);
    REQUIRE(r2->status == reply_status::accepted);
    loc2_jobs = r2->jobs;
    src.stop();
  }

  const auto url = fresh_store_url();
  auto [code, out] = run_cli({"store", "migrate", "--data-dir", data, "--to", url});
  INFO(out);
  REQUIRE(code == 0);
  CHECK_THAT(out, Catch::Contains("requests"));
  CHECK_THAT(out, Catch::Contains(" attempts"));
  CHECK_THAT(out, Catch::Contains(" jobs"));
  CHECK(out.find(pg_server::password) == std::string::npos);
  // Not into a store that holds anything.
  auto [again, again_out] = run_cli({"store", "migrate", "--data-dir", data, "--to", url});
  INFO(again_out);
  CHECK(again == 2);
  CHECK_THAT(again_out, Catch::Contains("is not empty"));

  klynaa_server pgb("broker", pg_env(url, "broker-m"));
  REQUIRE(role_of(pgb) == "active");
  const auto admin = pgb.endpoints()["admin"].get<std::string>();
  auto [sc, shown] = run_cli({"dlq", "show", dead_job, "--admin", admin, "--json"});
  INFO(shown);
  CHECK(sc == 0);
  CHECK_THAT(shown, Catch::Contains("processEscrowRelease"));
  CHECK_THAT(shown, Catch::Contains("http_404"));
  // Accepted ids stay duplicates; the unfinished job runs.
  auto dup = publish(ctx, pgb.ingress(), "mig-loc-2", 2);
  REQUIRE(dup);
  CHECK(dup->status == reply_status::duplicate);
  CHECK(dup->jobs == loc2_jobs);
  temp_dir nd;
  process node({KLYNAA_BINARY, "node", "--broker", pgb.cluster(), "--actors", "geo", "--data-dir", nd / "data"},
               {{"DJANGO_API_URL", "http://127.0.0.1:9"}}, nd / "node.log");
  bool ran = wait_for([&] {
    auto s = json::parse(http_get(admin, "/stats").second, nullptr, false);
    if (!s.is_object() || !s.contains("functions") || !s["functions"].contains("updateWorkerLocation")) return false;
    auto& f = s["functions"]["updateWorkerLocation"];
    return f.contains("outcomes") && f["outcomes"].value("ok", int64_t{0}) >= 1;
  }, 30000ms);
  INFO(node.log());
  CHECK(ran);
  node.kill(SIGTERM);
  node.wait(15000ms);
}

TEST_CASE("losing the database while running - the ingress answers overloaded, never accepted, then fail-stops",
          "[ha][postgres]") {
  auto& pg = pg_server::get();
  const auto url = fresh_store_url();
  auto a = std::make_unique<klynaa_server>("broker", pg_env(url, "broker-a"));
  REQUIRE(role_of(*a) == "active");
  zmq::context_t ctx;
  auto ok = publish(ctx, a->ingress(), "db-lost-before", 1);
  REQUIRE(ok);
  REQUIRE(ok->status == reply_status::accepted);

  pg.pause();
  // Until it fail-stops, every request is refused as overloaded with a delay,
  // naming the store's failure; nothing is accepted without the database.
  int overloaded = 0, accepted = 0;
  for (int i = 0; i < 50 && a->proc().running(); ++i) {
    auto r = publish(ctx, a->ingress(), "db-lost-" + std::to_string(i), 2, 1000ms);
    if (!r) continue;  // it exited meanwhile
    if (r->status == reply_status::accepted) ++accepted;
    if (r->status == reply_status::rejected && r->error && r->error->code == "overloaded") {
      ++overloaded;
      CHECK(r->retry_after_ms.value_or(0) > 0);
    }
  }
  CHECK(accepted == 0);
  CHECK(overloaded >= 1);
  // Renewals fail for 2/3 of the lease: it stops rather than risk a second active broker.
  auto code = a->proc().wait(std::chrono::milliseconds(lease_ms + 10000));
  REQUIRE(code);
  CHECK(*code == 3);
  CHECK_THAT(a->proc().log(), Catch::Contains("lost the lease"));

  // The database is back: a broker started again (as its supervisor would)
  // takes the lease, has the event accepted before, and none of the refused ones.
  pg.resume();
  a.reset();
  klynaa_server b("broker", pg_env(url, "broker-a"));
  REQUIRE(wait_for([&] { return role_of(b) == "active"; }, std::chrono::milliseconds(lease_ms + 10000)));
  auto again = publish(ctx, b.ingress(), "db-lost-before", 1);
  REQUIRE(again);
  CHECK(again->status == reply_status::duplicate);
  auto fresh = publish(ctx, b.ingress(), "db-lost-0", 2);
  REQUIRE(fresh);
  CHECK(fresh->status == reply_status::accepted);
}

TEST_CASE("a broker on an unreachable or misconfigured PostgreSQL exits at start naming store.url, never the password",
          "[ha][postgres]") {
  auto& pg = pg_server::get();
  const auto db = pg.fresh_database();
  const std::string wrong_password = "not-the-password-93c1";
  const std::string bad_password_url = pg.url(db, "klynaa", wrong_password);
  // A port on 127.0.0.1 where nothing listens: bound, then closed.
  int port = 0;
  {
    zmq::context_t ctx;
    zmq::socket_t s(ctx, zmq::socket_type::rep);
    s.bind("tcp://127.0.0.1:*");
    const std::string ep = s.get(zmq::sockopt::last_endpoint);
    port = std::stoi(ep.substr(ep.rfind(':') + 1));
  }
  const std::string unreachable_url =
      "postgresql://klynaa:" + wrong_password + "@127.0.0.1:" + std::to_string(port) + "/" + db;
  for (const auto& url : {bad_password_url, unreachable_url}) {
    INFO(url);
    temp_dir d;
    auto [code, out] = run_cli({"broker", "--data-dir", d / "data", "--ingress", "tcp://127.0.0.1:*"},
                               {{"KLYNAA_STORE_BACKEND", "postgres"}, {"KLYNAA_STORE_URL", url},
                                {"KLYNAA_CLUSTER_BIND", "tcp://127.0.0.1:*"}, {"KLYNAA_ADMIN_BIND", "127.0.0.1:0"}});
    INFO(out);
    CHECK(code == 1);
    CHECK_THAT(out, Catch::Contains("cannot open the store") && Catch::Contains("store.url"));
    CHECK(out.find(wrong_password) == std::string::npos);
  }
  // backend = "postgres" without a url is a config error (exit 2) naming the key.
  temp_dir d;
  auto [code, out] = run_cli({"broker", "--data-dir", d / "data"}, {{"KLYNAA_STORE_BACKEND", "postgres"}});
  CHECK(code == 2);
  CHECK_THAT(out, Catch::Contains("[store] url"));
}
