// The dead-letter queue (issue 7, docs/operations.md, "The dead-letter queue"):
// `klynaa dlq list | show |
// replay | purge` through the admin endpoint of a real `klynaa run` with the
// reference Django. Replaying an escrow release cannot release twice.
#include "django_support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

struct dlq_cluster : cluster_under_test {
  dlq_cluster()
      : cluster_under_test(std::map<std::string, std::string>{{"KLYNAA_RETRY_MAX_ATTEMPTS", "2"},
                                                              {"KLYNAA_RETRY_BASE_DELAY_MS", "50"}}) {}

  std::pair<int, std::string> dlq(std::vector<std::string> args) {
    args.insert(args.begin(), "dlq");
    args.push_back("--admin");
    args.push_back(klynaa->endpoints()["admin"].get<std::string>());
    return run_cli(args);
  }

  json dlq_json(std::vector<std::string> args) {
    args.push_back("--json");
    auto [code, out] = dlq(args);
    INFO(out);
    REQUIRE(code == 0);
    return json::parse(out.substr(out.find('{')));
  }

  int successful_releases(int pickup) {
    int n = 0;
    const auto state = django->state();  // not a temporary: the loop below keeps references
    for (auto& c : state["escrow_calls"])
      if (c["pickup_id"] == pickup && c["status_code"] == 200) ++n;
    return n;
  }

  int delivered_pickup() {
    auto p = django->post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5}, {"lng", 3.4}, {"price", 900},
                                                 {"status", "delivered"}, {"worker_id", 201}, {"publish", false}});
    return p["pickup"]["id"];
  }

  void publish(const std::string& id, const std::string& type, const json& data) {
    zmq::context_t ctx;
    raw_client cl(ctx, klynaa->ingress());
    auto r = cl.call(publish_frame(id, type, data));
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
  }
};

}  // namespace

TEST_CASE("a release that died while Django was down is listed, shown, replayed once and never twice",
          "[dlq][escrow]") {
  dlq_cluster c;
  const int pickup = c.delivered_pickup();
  // Django's escrow route answers 503 until reset: two attempts, then dead.
  c.django->post("/api/demo/faults/", {{"mode", "down"}, {"path_prefix", "/api/serverless/escrow/"}});
  c.publish("conf-dlq", "pickup.confirmed", {{"pickup_id", pickup}, {"customer_id", 101}});
  REQUIRE(wait_for([&] { return c.stats().value("dead_letters", 0) == 1; }, 30000ms));
  const std::string job = "conf-dlq#1";

  auto [lc, list_text] = c.dlq({"list"});
  INFO(list_text);
  CHECK(lc == 0);
  CHECK(list_text.find(job) != std::string::npos);
  CHECK(list_text.find("processEscrowRelease") != std::string::npos);
  CHECK(list_text.find("1 dead job(s)") != std::string::npos);
  auto list = c.dlq_json({"list"});
  CHECK(list["total"] == 1);
  REQUIRE(list["jobs"].size() == 1);
  CHECK(list["jobs"][0]["job_id"] == job);
  CHECK(list["jobs"][0]["attempts"] == 2);
  CHECK(list["jobs"][0]["ordering_key"] == "pickup:" + std::to_string(pickup));

  auto shown = c.dlq_json({"show", job});
  CHECK(shown["function"] == "processEscrowRelease");
  CHECK(shown["data"]["pickup_id"] == pickup);
  CHECK(shown["last_error"]["http_status"] == 503);
  REQUIRE(shown["history"].size() == 2);
  CHECK(shown["history"][0]["outcome"] == "retry");
  CHECK(shown["history"][1]["outcome"] == "dead");
  auto [sc, show_text] = c.dlq({"show", job});
  INFO(show_text);
  CHECK(sc == 0);
  CHECK(show_text.find("503") != std::string::npos);
  CHECK(c.successful_releases(pickup) == 0);

  // Django is back: the replay releases the escrow, once.
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  auto [rc, replay_text] = c.dlq({"replay", job});
  INFO(replay_text);
  CHECK(rc == 0);
  CHECK(replay_text.find("replayed " + job) != std::string::npos);
  REQUIRE(wait_for([&] { return c.successful_releases(pickup) == 1; }, 30000ms));
  REQUIRE(wait_for([&] { return c.stats().value("dead_letters", -1) == 0; }, 10000ms));
  CHECK(c.dlq_json({"list"})["total"] == 0);

  // Not dead any more: a second replay is refused and changes nothing.
  auto [rc2, again] = c.dlq({"replay", job});
  INFO(again);
  CHECK(rc2 == 1);
  CHECK(again.find("not in the dead-letter queue: " + job) != std::string::npos);

  // Another release of the same pickup dies while Django is down, and is
  // replayed after the escrow was released: Django's Idempotency-Key answers
  // already_released, a success, and there is still one release.
  c.django->post("/api/demo/faults/", {{"mode", "down"}, {"path_prefix", "/api/serverless/escrow/"}});
  auto [ic, iout] = run_cli({"invoke", "processEscrowRelease", "--ingress", c.klynaa->ingress(), "--id", "admin-again",
                             "--data", R"({"pickup_id": )" + std::to_string(pickup) + R"(, "release_reason": "admin"})"});
  INFO(iout);
  CHECK(ic == 1);
  REQUIRE(wait_for([&] { return c.stats().value("dead_letters", 0) == 1; }, 30000ms));
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  auto all = c.dlq_json({"replay", "--all"});
  CHECK(all["replayed"] == json::array({"admin-again#1"}));
  REQUIRE(wait_for([&] {
    auto s = c.stats();
    return s.value("dead_letters", -1) == 0 && unfinished(s, "processEscrowRelease") == 0;
  }, 30000ms));
  CHECK(c.successful_releases(pickup) == 1);
  std::this_thread::sleep_for(500ms);
  int worker_pushes = 0;  // the worker heard of the release once
  const auto lines = outbox(c.klynaa->data_dir());
  for (auto& l : lines)
    if (l.value("notification_type", "") == "escrow_released" && l["data"].value("pickup_id", 0) == pickup)
      ++worker_pushes;
  CHECK(worker_pushes == 1);
}

TEST_CASE("dlq purge removes dead jobs with their history, and bad usage exits 2", "[dlq]") {
  dlq_cluster c;
  for (int i = 0; i < 3; ++i)  // unknown pickups: Django answers 404, dead at once
    c.publish("unknown-" + std::to_string(i), "pickup.confirmed", {{"pickup_id", 990000 + i}, {"customer_id", 101}});
  REQUIRE(wait_for([&] { return c.stats().value("dead_letters", 0) == 3; }, 30000ms));
  auto one = c.dlq_json({"purge", "unknown-0#1"});
  CHECK(one["purged"] == json::array({"unknown-0#1"}));
  auto [sc, shown] = c.dlq({"show", "unknown-0#1"});
  CHECK(sc == 1);
  CHECK(shown.find("no dead job unknown-0#1") != std::string::npos);
  auto rest = c.dlq_json({"purge", "--all"});
  CHECK(rest["purged"].size() == 2);
  CHECK(c.dlq_json({"list"})["total"] == 0);
  REQUIRE(wait_for([&] { return c.stats().value("dead_letters", -1) == 0; }, 10000ms));

  for (auto args : std::vector<std::vector<std::string>>{{}, {"replay"}, {"replay", "x", "--all"}, {"purge"},
                                                         {"frobnicate"}, {"show"}, {"list", "--limit", "x"}}) {
    auto [code, out] = c.dlq(args);
    INFO(out);
    CHECK(code == 2);
    CHECK(out.find("usage: klynaa dlq") != std::string::npos);
  }
}

// The gauge (klynaa_dead_letters in /metrics, dead_letters in /stats) and
// `klynaa dlq list` agree after deaths of each kind, replays that die again,
// purges and a restart. The in-process test of the same rule, with a death
// caught before its commit, is in tests/broker/core_test.cpp.
TEST_CASE("the dead-letter gauge equals dlq list after deaths, replay, purge and a restart", "[dlq]") {
  dlq_cluster c;
  auto metric = [&]() -> int64_t {
    auto addr = c.klynaa->endpoints()["admin"].get<std::string>();
    auto colon = addr.rfind(':');
    httplib::Client h(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
    auto r = h.Get("/metrics");
    if (!r) return -1;
    static const std::regex line("\nklynaa_dead_letters ([0-9]+)\n");
    std::smatch m;
    return std::regex_search(r->body, m, line) ? std::stoll(m[1]) : -1;
  };
  auto agree = [&](int64_t n, const std::string& step) {
    int64_t listed = -1, gauge = -1, stat = -1;
    bool ok = wait_for([&] {
      listed = c.dlq_json({"list"})["total"].get<int64_t>();
      gauge = metric();
      stat = c.stats().value("dead_letters", int64_t{-1});
      return listed == n && gauge == n && stat == n;
    }, 30000ms);
    INFO(step << ": dlq list " << listed << ", klynaa_dead_letters " << gauge << ", /stats " << stat);
    CHECK(ok);
  };
  auto pickup = [&](const std::string& status) {
    auto p = c.django->post("/api/demo/pickups/", {{"customer_id", 101}, {"lat", 6.5}, {"lng", 3.4}, {"price", 900},
                                                   {"status", status}, {"worker_id", 201}, {"publish", false}});
    return p["pickup"]["id"].get<int>();
  };

  // Out of attempts: the escrow route answers 503 (2 attempts).
  c.django->post("/api/demo/faults/", {{"mode", "down"}, {"path_prefix", "/api/serverless/escrow/"}});
  c.publish("g-exhausted", "pickup.confirmed", {{"pickup_id", pickup("delivered")}, {"customer_id", 101}});
  agree(1, "attempts exhausted");
  c.django->post("/api/demo/faults/", {{"mode", "none"}});
  // Permanent: 404, no such pickup; 409, the pickup is disputed.
  c.publish("g-404", "pickup.confirmed", {{"pickup_id", 990100}, {"customer_id", 101}});
  agree(2, "404");
  c.publish("g-409", "pickup.confirmed", {{"pickup_id", pickup("disputed")}, {"customer_id", 101}});
  agree(3, "409 disputed");
  auto shown = c.dlq_json({"show", "g-409#1"});
  CHECK(shown["last_error"]["http_status"] == 409);

  // Replay one: Django is back, it is released.
  CHECK(c.dlq_json({"replay", "g-exhausted#1"})["replayed"] == json::array({"g-exhausted#1"}));
  agree(2, "replay one");
  // Replay the rest: both die again (404, 409).
  CHECK(c.dlq_json({"replay", "--all"})["replayed"].size() == 2);
  REQUIRE(wait_for([&] { return unfinished(c.stats(), "processEscrowRelease") == 0; }, 30000ms));
  agree(2, "replay --all, dead again");

  CHECK(c.dlq_json({"purge", "g-404#1"})["purged"] == json::array({"g-404#1"}));
  agree(1, "purge one");
  c.klynaa->stop();
  c.klynaa->start();
  agree(1, "restart");
  CHECK(c.dlq_json({"purge", "--all"})["purged"] == json::array({"g-409#1"}));
  agree(0, "purge --all");
}
