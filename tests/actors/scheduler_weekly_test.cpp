// generateWeeklyAnalytics (docs/events-and-functions.md, "generateDailyReport,
// generateWeeklyAnalytics, cleanupData (scheduler)") against a fake Django: the
// daily keys over the week, per_day, and the service areas of geohash-5 cells
// against the available workers.
#include "actors/scheduler.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "actors/geohash.hpp"
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
