// generateDailyReport, generateWeeklyAnalytics and cleanupData (contract §3)
// against a fake Django. Every expected summary is computed by hand in the
// comments next to the fixtures.
#include "actors/scheduler.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "actors/geohash.hpp"
#include "actors/registry.hpp"
#include "fake_server.hpp"
#include "tests/support/temp_dir.hpp"

using klynaa::actors::daily_summary;
using klynaa::actors::django_client;
using klynaa::actors::parse_coverage_worker;
using klynaa::actors::parse_iso_time_ms;
using klynaa::actors::parse_report_pickup;
using klynaa::actors::report_pickup;
using klynaa::actors::scheduler_handler;
using klynaa::actors::service_areas;
using klynaa::nodes::job;
using klynaa::nodes::job_result;
using klynaa::nodes::outcome;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;
using nlohmann::json;
using Catch::Matchers::Contains;

namespace {

const char* analytics_path = "/api/analytics/pickups/";
const char* reports_path = "/api/reports/";
const char* workers_path = "/api/workers/available/";
const char* cleanup_path = "/api/cleanup/";

/// ms since the epoch of an ISO time, for ts and the clock.
int64_t ms(const std::string& iso) {
  auto t = parse_iso_time_ms(iso);
  if (!t) FAIL("bad test time " << iso);
  return *t;
}

json pickup(int64_t id, const std::string& status, json worker_id, json price,
            const std::string& currency, const std::string& created, json accepted = nullptr,
            json delivered = nullptr, double lat = 6.5244, double lng = 3.3792) {
  return {{"id", id},           {"status", status},       {"customer_id", 100 + id},
          {"worker_id", worker_id}, {"lat", lat},         {"lng", lng},
          {"price", price},     {"currency", currency},   {"created_at", created},
          {"accepted_at", accepted}, {"delivered_at", delivered}};
}

std::vector<report_pickup> parsed(const json& list) {
  std::vector<report_pickup> out;
  for (const auto& p : list) {
    auto r = parse_report_pickup(p);
    if (auto* err = std::get_if<std::string>(&r)) FAIL(*err);
    out.push_back(std::get<report_pickup>(r));
  }
  return out;
}

// The day 2024-05-01, on two pages:
//  id status     worker price       created  accepted  delivered  accept  deliver
//   1 delivered  7      0.1   GHS   10:00    10:10     11:00      10      50
//   2 confirmed  7      0.2   GHS   10:00    10:20     10:50      20      30
//   3 delivered  3      10    USD   12:00    12:01:30  12:31:30   1.5     30
//   4 accepted   3      5.55  GHS   13:00    13:05     -          5       -
//   5 requested  -      2.5   GHS   14:00    -         -
//   6 cancelled  -      1     GHS   15:00    -         -
//   7 delivered  5      19.99 GHS   09:00    09:30     10:00      30      30
// by status: delivered 3, confirmed 1, accepted 1, requested 1, cancelled 1
//   (disputed has none and is left out);
// revenue (delivered_at set: 1, 2, 3, 7): GHS 0.1 + 0.2 + 19.99 = 20.29, USD 10;
// mean to accept: (10 + 20 + 1.5 + 5 + 30) / 5 = 13.3;
// mean to deliver: (50 + 30 + 30 + 30) / 4 = 35;
// top workers: 7 (2), then 3 and 5 (1 each) by id.
json day_page1() {
  return {{"pickups",
           {pickup(1, "delivered", 7, 0.1, "GHS", "2024-05-01T10:00:00Z", "2024-05-01T10:10:00Z",
                   "2024-05-01T11:00:00Z"),
            pickup(2, "confirmed", 7, 0.2, "GHS", "2024-05-01T10:00:00Z", "2024-05-01T10:20:00Z",
                   "2024-05-01T10:50:00Z"),
            pickup(3, "delivered", 3, 10, "USD", "2024-05-01T12:00:00Z", "2024-05-01T12:01:30Z",
                   "2024-05-01T12:31:30Z"),
            pickup(4, "accepted", 3, 5.55, "GHS", "2024-05-01T13:00:00Z", "2024-05-01T13:05:00Z")}},
          {"next", "c2"}};
}

json day_page2() {
  return {{"pickups",
           {pickup(5, "requested", nullptr, 2.5, "GHS", "2024-05-01T14:00:00Z"),
            pickup(6, "cancelled", nullptr, 1, "GHS", "2024-05-01T15:00:00Z"),
            pickup(7, "delivered", 5, 19.99, "GHS", "2024-05-01T09:00:00Z", "2024-05-01T09:30:00Z",
                   "2024-05-01T10:00:00Z")}},
          {"next", nullptr}};
}

json day_summary() {
  return {{"pickups_by_status",
           {{"delivered", 3}, {"confirmed", 1}, {"accepted", 1}, {"requested", 1}, {"cancelled", 1}}},
          {"delivered_revenue", {{"GHS", 20.29}, {"USD", 10.0}}},
          {"mean_minutes_to_accept", 13.3},
          {"mean_minutes_to_deliver", 35.0},
          {"top_workers",
           {{{"worker_id", 7}, {"delivered", 2}},
            {{"worker_id", 3}, {"delivered", 1}},
            {{"worker_id", 5}, {"delivered", 1}}}}};
}

/// Serves `first` without a cursor and `second` for cursor=c2.
void serve_two_pages(fake_server& django, json first, json second) {
  django.on("GET", analytics_path, [first, second](const recorded_request& r) {
    bool page2 = r.target.find("cursor=c2") != std::string::npos;
    return canned{200, (page2 ? second : first).dump()};
  });
}

void serve_one_page(fake_server& django, json pickups) {
  django.on("GET", analytics_path, canned{200, json{{"pickups", pickups}, {"next", nullptr}}.dump()});
}

struct fixture {
  fake_server django;
  int64_t clock_ms = ms("2024-03-01T10:00:00Z");
  scheduler_handler handler;

  fixture() : handler(make_client(django.url()), 5.0, [this] { return clock_ms; }) {}

  static std::unique_ptr<django_client> make_client(const std::string& url) {
    klynaa::protocol::config::django_section d;
    d.url = url;
    d.api_key = "scheduler-test-key";
    d.connect_timeout_ms = 1000;
    d.timeout_ms = 3000;
    return std::make_unique<django_client>(d);
  }

  job_result run(const std::string& function, json data, int64_t ts_ms = 0) {
    job j;
    j.id = "sched-1#1";
    j.function = function;
    j.data = std::move(data);
    j.ts_ms = ts_ms;
    return handler.run(j);
  }

  void report_answers(int id) { django.on("POST", reports_path, canned{201, json{{"id", id}}.dump()}); }

  recorded_request only_post() {
    auto posts = django.requests_to("POST", reports_path);
    REQUIRE(posts.size() == 1);
    return posts[0];
  }

  std::vector<std::string> analytics_targets() {
    std::vector<std::string> out;
    for (auto& r : django.requests_to("GET", analytics_path)) out.push_back(r.target);
    return out;
  }
};

std::string query(const std::string& from, const std::string& to) {
  auto enc = [](std::string s) {
    std::string out;
    for (char c : s) out += c == ':' ? std::string("%3A") : std::string(1, c);
    return out;
  };
  return std::string(analytics_path) + "?from=" + enc(from) + "&to=" + enc(to);
}

}  // namespace

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
  // Exactly the keys of contract §3, and money written exactly to 2 decimals.
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

TEST_CASE("scheduler: Django failures are transient or permanent per contract §3",
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

// --------------------------------------------------------- weekly analytics

namespace {

// The week of Monday 2024-04-29, all on one page:
//   id created (UTC day)  place (geohash-5)
//   1  Mon 04-29          Lagos 6.5244,3.3792 (s14mh)
//   2  Mon 04-29          6.52,3.37 (s14mh)
//   3  Tue 04-30          57.64911,10.40744 (u4pru)
//   4  Tue 04-30          42.6049,-5.6030 (ezs42)
//   5  Wed 05-01          6.53,3.35 (s14mh)
//   6  Sun 05-05 23:59    0.02,0.02 (s0000)
//   7  Sun 05-05 00:00    0.01,0.03 (s0000)
// Workers (service radius, distance to the cell centre):
//   201 Lagos, 5 km: s14mh centre 1.93 km away → covers s14mh
//   202 6.60,3.36, 5 km: 8.24 km from the s14mh centre → covers nothing
//   203 6.60,3.36, 10 km → covers s14mh
//   204 57.65,10.40, no radius → default 5 km; 1.80 km from u4pru's centre → covers it
// Cells by demand, ties by geohash: s14mh 3 (2 workers), s0000 2 (0), ezs42 1 (0),
// u4pru 1 (1); uncovered: s0000, ezs42.
json week_pickups() {
  return json::array(
      {pickup(1, "delivered", 201, 3, "NGN", "2024-04-29T08:00:00Z", "2024-04-29T08:10:00Z",
              "2024-04-29T09:00:00Z", 6.5244, 3.3792),
       pickup(2, "requested", nullptr, 3, "NGN", "2024-04-29T18:00:00Z", nullptr, nullptr, 6.52, 3.37),
       pickup(3, "requested", nullptr, 3, "DKK", "2024-04-30T08:00:00Z", nullptr, nullptr, 57.64911,
              10.40744),
       pickup(4, "cancelled", nullptr, 3, "EUR", "2024-04-30T09:00:00Z", nullptr, nullptr, 42.6049,
              -5.6030),
       pickup(5, "accepted", 203, 3, "NGN", "2024-05-01T08:00:00Z", "2024-05-01T08:30:00Z", nullptr,
              6.53, 3.35),
       pickup(6, "requested", nullptr, 3, "GHS", "2024-05-05T23:59:59Z", nullptr, nullptr, 0.02, 0.02),
       pickup(7, "requested", nullptr, 3, "GHS", "2024-05-05T00:00:00Z", nullptr, nullptr, 0.01, 0.03)});
}

json week_workers() {
  return {{"workers",
           {{{"id", 201}, {"lat", 6.5244}, {"lng", 3.3792}, {"service_radius_km", 5}},
            {{"id", 202}, {"lat", 6.60}, {"lng", 3.36}, {"service_radius_km", 5.0}},
            {{"id", 203}, {"lat", 6.60}, {"lng", 3.36}, {"service_radius_km", 10}},
            {{"id", 204}, {"lat", 57.65}, {"lng", 10.40}, {"service_radius_km", nullptr}}}}};
}

}  // namespace

TEST_CASE("scheduler: weekly analytics posts the daily keys, per_day and service areas",
          "[scheduler]") {
  fixture f;
  serve_one_page(f.django, week_pickups());
  f.django.on("GET", workers_path, canned{200, week_workers().dump()});
  f.report_answers(9);
  auto r = f.run("generateWeeklyAnalytics", {{"week_start", "2024-04-29"}});
  REQUIRE(r.kind == outcome::ok);
  CHECK(r.result == json{{"report_id", 9}, {"pickups", 7}});
  CHECK(r.children.empty());
  CHECK(f.analytics_targets() ==
        std::vector<std::string>{query("2024-04-29T00:00:00Z", "2024-05-06T00:00:00Z")});

  auto post = f.only_post();
  CHECK(post.header("Idempotency-Key") == "report-weekly-2024-04-29");
  json body = json::parse(post.body);
  CHECK(body["kind"] == "weekly");
  CHECK(body["period_start"] == "2024-04-29T00:00:00Z");
  CHECK(body["period_end"] == "2024-05-06T00:00:00Z");
  json expected = daily_summary(parsed(week_pickups()));
  expected["per_day"] = json::array({{{"date", "2024-04-29"}, {"pickups", 2}},
                                     {{"date", "2024-04-30"}, {"pickups", 2}},
                                     {{"date", "2024-05-01"}, {"pickups", 1}},
                                     {{"date", "2024-05-02"}, {"pickups", 0}},
                                     {{"date", "2024-05-03"}, {"pickups", 0}},
                                     {{"date", "2024-05-04"}, {"pickups", 0}},
                                     {{"date", "2024-05-05"}, {"pickups", 2}}});
  expected["service_areas"] = {
      {"cells",
       {{{"geohash", "s14mh"}, {"pickups", 3}, {"workers", 2}},
        {{"geohash", "s0000"}, {"pickups", 2}, {"workers", 0}},
        {{"geohash", "ezs42"}, {"pickups", 1}, {"workers", 0}},
        {{"geohash", "u4pru"}, {"pickups", 1}, {"workers", 1}}}},
      {"uncovered", {"s0000", "ezs42"}}};
  CHECK(body["summary"] == expected);
  // The daily keys over the week, spelled out.
  CHECK(body["summary"]["pickups_by_status"] ==
        json{{"delivered", 1}, {"requested", 4}, {"cancelled", 1}, {"accepted", 1}});
  CHECK(body["summary"]["delivered_revenue"] == json{{"NGN", 3.0}});
  CHECK(body["summary"]["mean_minutes_to_accept"] == json(20.0));
  CHECK(body["summary"]["mean_minutes_to_deliver"] == json(50.0));
  CHECK(body["summary"]["top_workers"] == json{{{"worker_id", 201}, {"delivered", 1}}});
}

TEST_CASE("scheduler: a week_start that is not a Monday is a permanent failure",
          "[scheduler]") {
  fixture f;
  auto r = f.run("generateWeeklyAnalytics", {{"week_start", "2024-05-01"}});  // a Wednesday
  CHECK(r.kind == outcome::permanent);
  CHECK(r.error_code == "invalid_data");
  CHECK_THAT(r.message, Contains("data.week_start") && Contains("Monday") && Contains("Wednesday"));
  CHECK(f.django.requests().empty());
}

TEST_CASE("scheduler: the default week is the last full Monday-to-Sunday week before ts",
          "[scheduler]") {
  auto week_for = [](const std::string& ts) {
    fixture f;
    serve_one_page(f.django, json::array());
    f.django.on("GET", workers_path, canned{200, R"({"workers": []})"});
    f.report_answers(3);
    auto r = f.run("generateWeeklyAnalytics", json::object(), ms(ts));
    REQUIRE(r.kind == outcome::ok);
    return f.only_post().header("Idempotency-Key");
  };
  CHECK(week_for("2024-05-06T07:00:00Z") == "report-weekly-2024-04-29");  // Monday, schedule time
  CHECK(week_for("2024-05-08T12:00:00Z") == "report-weekly-2024-04-29");  // Wednesday
  CHECK(week_for("2024-05-12T23:59:59Z") == "report-weekly-2024-04-29");  // Sunday: week not over
  CHECK(week_for("2024-05-13T00:00:00Z") == "report-weekly-2024-05-06");
  CHECK(week_for("2025-01-01T07:00:00Z") == "report-weekly-2024-12-23");  // across the year
}

TEST_CASE("scheduler: uncovered lists at most 10 cells, most demand first, ties by geohash",
          "[scheduler]") {
  // 12 cells along the equator, one pickup each, plus a second pickup in the
  // last cell; one worker covers the cell "s0000" only.
  json list = json::array();
  for (int i = 0; i < 12; ++i)
    list.push_back(pickup(i + 1, "requested", nullptr, 1, "GHS", "2024-05-01T10:00:00Z", nullptr,
                          nullptr, 0.02, 0.02 + 0.05 * i));
  list.push_back(pickup(13, "requested", nullptr, 1, "GHS", "2024-05-01T10:00:00Z", nullptr,
                        nullptr, 0.02, 0.02 + 0.05 * 11));
  auto pickups = parsed(list);
  auto w = parse_coverage_worker(
      json{{"id", 1}, {"lat", 0.02197265625}, {"lng", 0.02197265625}, {"service_radius_km", 0.001}},
      5.0);
  REQUIRE(std::holds_alternative<klynaa::actors::coverage_worker>(w));
  json areas = service_areas(pickups, {std::get<klynaa::actors::coverage_worker>(w)});

  std::vector<std::string> hashes;
  for (const auto& p : pickups)
    hashes.push_back(klynaa::actors::geohash::encode(*p.lat, *p.lng, 5));
  const std::string busiest = hashes[11];
  std::vector<std::string> rest(hashes.begin(), hashes.begin() + 11);
  std::sort(rest.begin(), rest.end());
  REQUIRE(std::set<std::string>(hashes.begin(), hashes.end()).size() == 12);

  REQUIRE(areas["cells"].size() == 12);
  CHECK(areas["cells"][0] == json{{"geohash", busiest}, {"pickups", 2}, {"workers", 0}});
  for (size_t i = 0; i < rest.size(); ++i) CHECK(areas["cells"][i + 1]["geohash"] == rest[i]);

  json expected_uncovered = json::array({busiest});
  for (const auto& h : rest)
    if (h != "s0000" && expected_uncovered.size() < 10) expected_uncovered.push_back(h);
  CHECK(areas["uncovered"] == expected_uncovered);
  CHECK(std::find(rest.begin(), rest.end(), "s0000") != rest.end());
}

TEST_CASE("scheduler: coverage counts a worker whose radius reaches the cell's centre",
          "[scheduler]") {
  auto pickups = parsed(json::array({pickup(1, "requested", nullptr, 1, "NGN",
                                            "2024-05-01T10:00:00Z", nullptr, nullptr, 6.5244, 3.3792)}));
  auto worker = [](double radius) {
    return std::get<klynaa::actors::coverage_worker>(parse_coverage_worker(
        json{{"id", 1}, {"lat", 6.5244}, {"lng", 3.3792}, {"service_radius_km", radius}}, 5.0));
  };
  // The s14mh centre is 1.9275 km from Lagos.
  CHECK(service_areas(pickups, {worker(1.93)})["cells"][0]["workers"] == 1);
  CHECK(service_areas(pickups, {worker(1.92)})["cells"][0]["workers"] == 0);
  CHECK(service_areas(pickups, {worker(1.93), worker(2), worker(1)})["cells"][0]["workers"] == 2);
  CHECK(service_areas(pickups, {})["uncovered"] == json{"s14mh"});
  // A worker entry without a usable location is refused.
  auto bad = parse_coverage_worker(json{{"id", 2}, {"lat", "x"}, {"lng", 3.0}}, 5.0);
  REQUIRE(std::holds_alternative<std::string>(bad));
  CHECK_THAT(std::get<std::string>(bad), Contains("worker 2") && Contains("lat"));
}

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
