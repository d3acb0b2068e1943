// cleanupData, the scheduler's ISO 8601 parsing and its registry entry
// (docs/events-and-functions.md, "generateDailyReport, generateWeeklyAnalytics,
// cleanupData (scheduler)") against a fake Django. The daily report and the
// weekly analytics have files of their own.
#include "actors/scheduler.hpp"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "actors/registry.hpp"
#include "scheduler_fixture.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::daily_summary;
using klynaa::actors::parse_coverage_worker;
using klynaa::actors::parse_iso_time_ms;
using klynaa::actors::report_pickup;
using klynaa::actors::service_areas;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::recorded_request;
using nlohmann::json;
using Catch::Matchers::Contains;
using namespace scheduler_fixture;

// ----------------------------------------------------------------- cleanup

TEST_CASE("scheduler: cleanupData asks Django to delete, 90 days by default", "[scheduler]") {
  fixture f;
  f.django.on("POST", cleanup_path, canned{200, R"({"deleted": 4})"});
  auto r = f.run("cleanupData", json::object());
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"deleted", 4}, {"pruned", 0}});
  r = f.run("cleanupData", {{"older_than_days", 30}});
  REQUIRE(r.kind == outcome::ok);
  auto posts = f.django.requests_to("POST", cleanup_path);
  REQUIRE(posts.size() == 2);
  CHECK(json::parse(posts[0].body) == json{{"older_than_days", 90}});
  CHECK(json::parse(posts[1].body) == json{{"older_than_days", 30}});
  CHECK(r.children.empty());
}

TEST_CASE("scheduler: cleanupData refuses a negative age and passes Django's 4xx on",
          "[scheduler]") {
  fixture f;
  auto r = f.run("cleanupData", {{"older_than_days", -1}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "invalid_data");
  CHECK(f.django.requests().empty());
  f.django.on("POST", cleanup_path, canned{403, R"({"error": "forbidden"})"});
  r = f.run("cleanupData", json::object());
  CHECK(r.kind == outcome::permanent);
  CHECK(r.http_status == 403);
}

TEST_CASE("scheduler: another function is a permanent failure", "[scheduler]") {
  fixture f;
  auto r = f.run("processEscrowRelease", {{"pickup_id", 1}, {"release_reason", "admin"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "unknown_function");
  CHECK(f.django.requests().empty());
}

// ----------------------------------------------------------------- parsing

TEST_CASE("scheduler: ISO 8601 times as Django writes them", "[scheduler]") {
  CHECK(parse_iso_time_ms("1970-01-01T00:00:00Z") == 0);
  CHECK(parse_iso_time_ms("2024-05-01T10:00:00Z") == 1714557600000);
  CHECK(parse_iso_time_ms("2024-05-01T10:00:00.5Z") == 1714557600500);
  CHECK(parse_iso_time_ms("2024-05-01T10:00:00.123456Z") == 1714557600123);
  CHECK(parse_iso_time_ms("2024-05-01T12:00:00+02:00") == 1714557600000);
  CHECK(parse_iso_time_ms("2024-05-01T05:30:00-0430") == 1714557600000);
  CHECK(parse_iso_time_ms("2024-05-01T10:00:00") == 1714557600000);
  CHECK(parse_iso_time_ms("2024-05-01 10:00:00Z") == 1714557600000);
  CHECK_FALSE(parse_iso_time_ms("2024-02-30T10:00:00Z"));
  CHECK_FALSE(parse_iso_time_ms("2024-05-01T24:00:00Z"));
  CHECK_FALSE(parse_iso_time_ms("2024-05-01"));
  CHECK_FALSE(parse_iso_time_ms("2024-05-01T10:00:00ZZ"));
  CHECK_FALSE(parse_iso_time_ms("2024-05-01T10:00:00."));
  CHECK_FALSE(parse_iso_time_ms("yesterday"));
  CHECK_FALSE(parse_iso_time_ms(""));
}

// ---------------------------------------------------------------- registry

TEST_CASE("scheduler: the registry builds the scheduler kind with its functions and workers",
          "[scheduler]") {
  klynaa::test::temp_dir dir;
  klynaa::protocol::config cfg;
  cfg.django.url = "http://127.0.0.1:1";
  cfg.node.scheduler_workers = 2;
  auto specs = klynaa::actors::make_actor_kinds(cfg, dir.path, {"scheduler"});
  REQUIRE(specs.size() == 1);
  CHECK(specs[0].kind == "scheduler");
  CHECK(specs[0].functions ==
        std::vector<std::string>{"generateDailyReport", "generateWeeklyAnalytics", "cleanupData"});
  CHECK(specs[0].workers == 2);
  CHECK(specs[0].make_handler() != nullptr);
}
