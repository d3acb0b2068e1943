// generateDailyReport (docs/events-and-functions.md, "generateDailyReport,
// generateWeeklyAnalytics, cleanupData (scheduler)") against a fake Django: the
// pages followed, the exact summary, the default date, failures and retries.
// Every expected summary is computed by hand in scheduler_fixture.hpp.
#include "actors/scheduler.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "scheduler_fixture.hpp"

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

// ------------------------------------------------------------ daily report

TEST_CASE("scheduler: a daily report follows next, posts the exact summary and notifies the admins",
          "[scheduler]") {
  fixture f;
  serve_two_pages(f.django, day_page1(), day_page2());
  f.report_answers(42);
  auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"report_id", 42}, {"pickups", 7}});

  CHECK(f.analytics_targets() ==
        std::vector<std::string>{query("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"),
                                 query("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z") + "&cursor=c2"});

  auto post = f.only_post();
  CHECK(post.header("Idempotency-Key") == "report-daily-2024-05-01");
  CHECK(post.header("Authorization") == "Api-Key scheduler-test-key");
  json body = json::parse(post.body);
  CHECK(body == json{{"kind", "daily"},
                     {"period_start", "2024-05-01T00:00:00Z"},
                     {"period_end", "2024-05-02T00:00:00Z"},
                     {"summary", day_summary()}});
  // Exactly the keys docs/events-and-functions.md lists, and money written
  // exactly to 2 decimals.
  std::vector<std::string> keys;
  for (auto& [k, v] : body["summary"].items()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"delivered_revenue", "mean_minutes_to_accept",
                                         "mean_minutes_to_deliver", "pickups_by_status",
                                         "top_workers"});
  CHECK_THAT(post.body, Contains(R"("delivered_revenue":{"GHS":20.29,"USD":10.0})"));
  CHECK_FALSE(body["summary"]["pickups_by_status"].contains("disputed"));

  REQUIRE(r.children.size() == 1);
  CHECK(r.children[0].id == "#daily-report-2024-05-01");
  CHECK(r.children[0].function == "sendPickupNotification");
  CHECK(r.children[0].data ==
        json{{"report_id", 42}, {"notification_type", "daily_report"}, {"user_type", "admin"}});
  CHECK(r.children[0].due_ms == 0);
}

TEST_CASE("scheduler: revenue is summed in cents, so 0.1 + 0.2 is exactly 0.3", "[scheduler]") {
  auto s = daily_summary(parsed(json::array(
      {pickup(1, "delivered", 1, 0.1, "GHS", "2024-05-01T10:00:00Z", nullptr, "2024-05-01T11:00:00Z"),
       pickup(2, "delivered", 1, 0.2, "GHS", "2024-05-01T10:00:00Z", nullptr, "2024-05-01T11:00:00Z"),
       pickup(3, "delivered", 2, 1.01, "EUR", "2024-05-01T10:00:00Z", nullptr, "2024-05-01T11:00:00Z"),
       pickup(4, "delivered", 2, 0.07, "EUR", "2024-05-01T10:00:00Z", nullptr, "2024-05-01T11:00:00Z"),
       // not delivered: no revenue, whatever its price
       pickup(5, "accepted", 2, 99.99, "GHS", "2024-05-01T10:00:00Z", "2024-05-01T10:01:00Z")})));
  CHECK(s["delivered_revenue"].dump() == R"({"EUR":1.08,"GHS":0.3})");
  // Ten thousand deliveries of 0.1 sum to exactly 1000, not 999.9999999999...
  json many = json::array();
  for (int i = 1; i <= 10000; ++i)
    many.push_back(pickup(i, "delivered", 1, 0.1, "GHS", "2024-05-01T10:00:00Z", nullptr,
                          "2024-05-01T11:00:00Z"));
  CHECK(daily_summary(parsed(many))["delivered_revenue"].dump() == R"({"GHS":1000.0})");
}

TEST_CASE("scheduler: an empty day has empty maps, null means and no top workers",
          "[scheduler]") {
  fixture f;
  serve_one_page(f.django, json::array());
  f.report_answers(1);
  auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"report_id", 1}, {"pickups", 0}});
  CHECK(json::parse(f.only_post().body)["summary"] ==
        json{{"pickups_by_status", json::object()},
             {"delivered_revenue", json::object()},
             {"mean_minutes_to_accept", nullptr},
             {"mean_minutes_to_deliver", nullptr},
             {"top_workers", json::array()}});
}

TEST_CASE("scheduler: means round to 2 decimals and skip pickups without both times",
          "[scheduler]") {
  // accept: 1 min 20 s and 2 min → mean 1 min 40 s = 1.6666… → 1.67;
  // deliver: only pickup 2 has accepted and delivered: 10 s → 0.17; pickup 3 has
  // delivered without accepted and counts for neither mean.
  auto s = daily_summary(parsed(json::array(
      {pickup(1, "accepted", 1, 1, "GHS", "2024-05-01T10:00:00Z", "2024-05-01T10:01:20Z"),
       pickup(2, "delivered", 1, 1, "GHS", "2024-05-01T10:00:00Z", "2024-05-01T10:02:00Z",
              "2024-05-01T10:02:10Z"),
       pickup(3, "delivered", 1, 1, "GHS", "2024-05-01T10:00:00Z", nullptr,
              "2024-05-01T12:00:00Z")})));
  CHECK(s["mean_minutes_to_accept"] == json(1.67));
  CHECK(s["mean_minutes_to_deliver"] == json(0.17));
  CHECK(s["top_workers"] == json{{{"worker_id", 1}, {"delivered", 2}}});
}

TEST_CASE("scheduler: top_workers keeps 10, most deliveries first, ties by worker id",
          "[scheduler]") {
  // Workers 1..12 deliver 1 each, except 12 and 11 with 3 and 2.
  json list = json::array();
  int id = 1;
  for (int w = 1; w <= 12; ++w) {
    int n = w == 12 ? 3 : w == 11 ? 2 : 1;
    for (int k = 0; k < n; ++k)
      list.push_back(pickup(id++, "delivered", w, 1, "GHS", "2024-05-01T10:00:00Z",
                            "2024-05-01T10:01:00Z", "2024-05-01T10:02:00Z"));
  }
  // One delivered pickup without a worker counts for revenue only.
  list.push_back(pickup(id++, "delivered", nullptr, 1, "GHS", "2024-05-01T10:00:00Z", nullptr,
                        "2024-05-01T10:02:00Z"));
  auto s = daily_summary(parsed(list));
  json expected = json::array({{{"worker_id", 12}, {"delivered", 3}}, {{"worker_id", 11}, {"delivered", 2}}});
  for (int w = 1; w <= 8; ++w) expected.push_back({{"worker_id", w}, {"delivered", 1}});
  CHECK(s["top_workers"] == expected);
  CHECK(s["delivered_revenue"] == json{{"GHS", 16.0}});
  CHECK(s["pickups_by_status"] == json{{"delivered", 16}});
}

TEST_CASE("scheduler: the default date is the UTC day before the job's ts", "[scheduler]") {
  fixture f;
  serve_one_page(f.django, json::array());
  f.report_answers(5);
  // 00:30 UTC on May 2: the report is for May 1.
  auto r = f.run("generateDailyReport", json::object(), ms("2024-05-02T00:30:00Z"));
  REQUIRE(r.kind == outcome::ok);
  CHECK(f.analytics_targets().at(0) == query("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"));
  CHECK(f.only_post().header("Idempotency-Key") == "report-daily-2024-05-01");
  CHECK(r.children.at(0).id == "#daily-report-2024-05-01");
}

TEST_CASE("scheduler: without ts the default date comes from the clock, across Feb 29",
          "[scheduler]") {
  fixture f;
  serve_one_page(f.django, json::array());
  f.report_answers(6);
  f.clock_ms = ms("2024-03-01T10:00:00Z");
  auto r = f.run("generateDailyReport", nullptr);  // a schedule's data may be null
  REQUIRE(r.kind == outcome::ok);
  CHECK(f.analytics_targets().at(0) == query("2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"));
  CHECK(json::parse(f.only_post().body)["period_start"] == "2024-02-29T00:00:00Z");
}

TEST_CASE("scheduler: a bad date is a permanent failure and calls nothing", "[scheduler]") {
  fixture f;
  auto r = f.run("generateDailyReport", {{"date", "2023-02-29"}});
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "invalid_data");
  CHECK_THAT(r.message, Contains("data.date"));
  r = f.run("generateDailyReport", {{"date", 20240501}});
  CHECK(r.kind == outcome::permanent);
  CHECK(f.django.requests().empty());
}

TEST_CASE("scheduler: Django failures are transient or permanent per the failure rules",
          "[scheduler]") {
  SECTION("a 503 from the analytics endpoint is transient") {
    fixture f;
    f.django.on("GET", analytics_path, canned{503, R"({"error": "down"})", {{"Retry-After", "7"}}});
    auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
    CHECK(r.kind == outcome::transient);
    CHECK(r.http_status == 503);
    CHECK(r.retry_after_ms == 7000);
    CHECK(f.django.requests_to("POST", reports_path).empty());
  }
  SECTION("a 400 from the reports endpoint is permanent") {
    fixture f;
    serve_one_page(f.django, json::array());
    f.django.on("POST", reports_path, canned{400, R"({"error": "invalid_field"})"});
    auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
    CHECK(r.kind == outcome::permanent);
    CHECK(r.error_code == "http_400");
    CHECK(r.children.empty());
  }
  SECTION("a pickup without a status is a transient bad_response naming it") {
    fixture f;
    json p = pickup(9, "delivered", 1, 1, "GHS", "2024-05-01T10:00:00Z");
    p.erase("status");
    serve_one_page(f.django, json::array({p}));
    auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
    CHECK(r.kind == outcome::transient);
    CHECK(r.error_code == "bad_response");
    CHECK_THAT(r.message, Contains("pickup 9") && Contains("status"));
  }
  SECTION("a delivered pickup without a price is a bad_response") {
    fixture f;
    serve_one_page(f.django, json::array({pickup(9, "delivered", 1, nullptr, "GHS",
                                                 "2024-05-01T10:00:00Z", nullptr,
                                                 "2024-05-01T11:00:00Z")}));
    auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
    CHECK(r.error_code == "bad_response");
    CHECK_THAT(r.message, Contains("price"));
  }
  SECTION("a next cursor that repeats is a bad_response, not an endless loop") {
    fixture f;
    f.django.on("GET", analytics_path, canned{200, R"({"pickups": [], "next": "same"})"});
    auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
    CHECK(r.kind == outcome::transient);
    CHECK(r.error_code == "bad_response");
    CHECK_THAT(r.message, Contains("same"));
    CHECK(f.django.requests_to("GET", analytics_path).size() == 2);
  }
  SECTION("a report answer without an id is a bad_response") {
    fixture f;
    serve_one_page(f.django, json::array());
    f.django.on("POST", reports_path, canned{201, R"({"ok": true})"});
    auto r = f.run("generateDailyReport", {{"date", "2024-05-01"}});
    CHECK(r.kind == outcome::transient);
    CHECK(r.error_code == "bad_response");
  }
  SECTION("no Django at all is transient") {
    klynaa::protocol::config::django_section d;
    d.url = "http://127.0.0.1:" + std::to_string(klynaa::test::closed_port());
    d.connect_timeout_ms = 500;
    d.timeout_ms = 1000;
    scheduler_handler h(std::make_unique<django_client>(d));
    job j;
    j.id = "x";
    j.function = "cleanupData";
    j.data = json::object();
    auto r = h.run(j);
    CHECK(r.kind == outcome::transient);
    CHECK(r.error_code == "connect");
  }
}

TEST_CASE("scheduler: a retry posts the same report with the same Idempotency-Key",
          "[scheduler]") {
  fixture f;
  serve_one_page(f.django, json::array());
  f.django.on_sequence("POST", reports_path,
                       {canned{502, "bad gateway"}, canned{201, R"({"id": 77})"}});
  auto first = f.run("generateDailyReport", {{"date", "2024-05-01"}});
  CHECK(first.kind == outcome::transient);
  auto second = f.run("generateDailyReport", {{"date", "2024-05-01"}});
  REQUIRE(second.kind == outcome::ok);
  auto posts = f.django.requests_to("POST", reports_path);
  REQUIRE(posts.size() == 2);
  CHECK(posts[0].header("Idempotency-Key") == posts[1].header("Idempotency-Key"));
  CHECK(posts[0].body == posts[1].body);
}
