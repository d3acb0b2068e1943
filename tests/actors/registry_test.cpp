// make_actor_kinds: which kinds are built, their workers, and config errors.
#include "actors/registry.hpp"
#include "actors/http_loop.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>

#include "fake_server.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::check_actor_config;
using klynaa::actors::make_actor_kinds;
using klynaa::nodes::outcome;
using nlohmann::json;

namespace {

klynaa::protocol::config config_for(const std::string& django_url) {
  klynaa::protocol::config cfg;
  cfg.django.url = django_url;
  cfg.django.api_key = "registry-key";
  cfg.node.notifier_workers = 3;
  cfg.node.escrow_workers = 2;
  return cfg;
}

}  // namespace

TEST_CASE("every actor kind is built with its functions and worker counts") {
  klynaa::test::temp_dir dir;
  auto cfg = config_for("http://127.0.0.1:1");
  auto specs = make_actor_kinds(cfg, dir.path, {"notifier", "escrow", "geo", "scheduler"});
  REQUIRE(specs.size() == 4);
  std::map<std::string, const klynaa::nodes::actor_kind_spec*> by_kind;
  for (auto& s : specs) by_kind[s.kind] = &s;
  REQUIRE(by_kind.size() == 4);
  CHECK(by_kind["notifier"]->functions == std::vector<std::string>{"sendPickupNotification"});
  CHECK(by_kind["notifier"]->workers == 3);
  CHECK(by_kind["escrow"]->functions == std::vector<std::string>{"processEscrowRelease"});
  CHECK(by_kind["escrow"]->workers == 2);
  CHECK(by_kind["scheduler"]->functions ==
        std::vector<std::string>{"generateDailyReport", "generateWeeklyAnalytics", "cleanupData"});
  CHECK(by_kind["scheduler"]->workers == cfg.node.scheduler_workers);
  auto geo_fns = by_kind["geo"]->functions;
  std::sort(geo_fns.begin(), geo_fns.end());
  CHECK(geo_fns == std::vector<std::string>{"notifyNearbyWorkers", "updateWorkerLocation"});
  // Only geo queues jobs beyond its workers; the others call Django and take seconds.
  CHECK(by_kind["geo"]->prefetch == 256);
  for (auto& s : specs)
    if (s.kind != "geo") CHECK(s.prefetch == 0);
  // Without an event loop, the kinds that call Django block a thread per
  // worker; geo's workers share the scheduler's threads.
  CHECK(!by_kind["geo"]->blocking);
  for (auto& s : specs) {
    CHECK_FALSE(s.fibers);
    if (s.kind != "geo") CHECK(s.blocking);
  }
  for (auto& s : specs)
    if (s.kind != "geo") CHECK(s.make_handler() != nullptr);
}

TEST_CASE("with the node's event loop, notifier, escrow and scheduler run their jobs on fibers, geo does not") {
  klynaa::test::temp_dir dir;
  auto cfg = config_for("http://127.0.0.1:1");
  auto loop = klynaa::actors::make_http_loop(cfg);
  REQUIRE(loop->start_error().empty());
  auto specs = make_actor_kinds(cfg, dir.path, {"notifier", "escrow", "geo", "scheduler"}, loop);
  REQUIRE(specs.size() == 4);
  for (auto& s : specs) {
    INFO(s.kind);
    CHECK(s.fibers == (s.kind != "geo"));
    CHECK_FALSE(s.blocking);
    if (s.kind != "geo") CHECK(s.make_handler() != nullptr);
  }
}

TEST_CASE("only the requested kinds are built, each once") {
  klynaa::test::temp_dir dir;
  auto specs = make_actor_kinds(config_for("http://127.0.0.1:1"), dir.path, {"escrow", "escrow"});
  REQUIRE(specs.size() == 1);
  CHECK(specs[0].kind == "escrow");
}

TEST_CASE("handlers made by the specs run jobs against Django") {
  klynaa::test::fake_server django;
  django.on("POST", "/api/serverless/escrow/5/release/",
            {200, R"({"pickup_id": 5, "status": "released", "amount": 3, "currency": "GHS"})"});
  django.on("GET", "/api/serverless/pickups/5/",
            {200, R"({"id": 5, "status": "delivered", "customer_id": 11, "worker_id": 22, "price": 3, "currency": "GHS"})"});
  django.on("GET", "/api/users/22/tokens/", {200, R"({"user_id": 22, "tokens": [{"token": "w", "platform": "ios"}]})"});
  klynaa::test::temp_dir dir;
  auto cfg = config_for(django.url());
  cfg.notifications.templates["escrow_released"]["title"] = "Paid: {pickup_id}";
  auto specs = make_actor_kinds(cfg, dir.path, {"escrow", "notifier"});
  REQUIRE(specs.size() == 2);

  auto escrow = specs[0].make_handler();
  klynaa::nodes::job release;
  release.id = "evt-5#1";
  release.function = "processEscrowRelease";
  release.data = {{"pickup_id", 5}, {"release_reason", "admin"}};
  auto released = escrow->run(release);
  REQUIRE(released.kind == outcome::ok);
  REQUIRE(released.children.size() == 1);

  // Run the child job the broker would create, through a notifier handler.
  auto notifier = specs[1].make_handler();
  const auto& child = released.children[0];
  klynaa::nodes::job notify;
  notify.id = child.id;
  notify.function = child.function;
  notify.data = child.data;
  auto notified = notifier->run(notify);
  REQUIRE(notified.kind == outcome::ok);
  CHECK(notified.result["recipients"] == json{22});
  auto lines = klynaa::test::read_lines(dir / "outbox.jsonl");
  REQUIRE(lines.size() == 1);
  auto line = json::parse(lines[0]);
  CHECK(line["job_id"] == "#escrow-released-5");
  CHECK(line["title"] == "Paid: 5");
}

TEST_CASE("config errors are reported by name before anything is built") {
  klynaa::test::temp_dir dir;
  auto no_url = check_actor_config(config_for(""), dir.path, {"escrow"});
  REQUIRE(no_url);
  CHECK_THAT(*no_url, Catch::Contains("[django] url"));
  CHECK_THROWS_AS(make_actor_kinds(config_for(""), dir.path, {"escrow"}),
                  klynaa::actors::actor_config_error);

  auto unknown = check_actor_config(config_for("http://x"), dir.path, {"mailer"});
  REQUIRE(unknown);
  CHECK_THAT(*unknown, Catch::Contains("--actors"));

  auto cfg = config_for("http://x");
  cfg.notifications.service = "firebase";
  auto firebase = check_actor_config(cfg, dir.path, {"notifier"});
  REQUIRE(firebase);
  CHECK_THAT(*firebase, Catch::Contains("firebase"));
  CHECK_FALSE(check_actor_config(cfg, dir.path, {"escrow"}));  // escrow needs no provider

  auto bad_template = config_for("http://x");
  bad_template.notifications.templates["pickup_accepted"]["body"] = "{oops}";
  auto tmpl = check_actor_config(bad_template, dir.path, {"notifier"});
  REQUIRE(tmpl);
  CHECK_THAT(*tmpl, Catch::Contains("{oops}"));

  CHECK_FALSE(check_actor_config(config_for("http://x"), dir.path, {"notifier", "escrow"}));
}
