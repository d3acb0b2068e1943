// What the scheduler's tests share (scheduler_daily_test.cpp,
// scheduler_weekly_test.cpp, scheduler_test.cpp): a scheduler_handler against a
// fake Django with a settable clock, pickup objects, and the day of pickups whose
// summary the comments work out by hand.
#pragma once

#include "actors/scheduler.hpp"

#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "fake_server.hpp"

namespace scheduler_fixture {

using klynaa::actors::django_client;
using klynaa::actors::parse_iso_time_ms;
using klynaa::actors::parse_report_pickup;
using klynaa::actors::report_pickup;
using klynaa::actors::scheduler_handler;
using klynaa::nodes::job;
using klynaa::nodes::job_result;
using klynaa::test::canned;
using klynaa::test::fake_server;
using klynaa::test::recorded_request;
using nlohmann::json;

constexpr const char* analytics_path = "/api/analytics/pickups/";
constexpr const char* reports_path = "/api/reports/";
constexpr const char* workers_path = "/api/workers/available/";
constexpr const char* cleanup_path = "/api/cleanup/";

/// ms since the epoch of an ISO time, for ts and the clock.
inline int64_t ms(const std::string& iso) {
  auto t = parse_iso_time_ms(iso);
  if (!t) FAIL("bad test time " << iso);
  return *t;
}

inline json pickup(int64_t id, const std::string& status, json worker_id, json price,
                   const std::string& currency, const std::string& created, json accepted = nullptr,
                   json delivered = nullptr, double lat = 6.5244, double lng = 3.3792) {
  return {{"id", id},           {"status", status},       {"customer_id", 100 + id},
          {"worker_id", worker_id}, {"lat", lat},         {"lng", lng},
          {"price", price},     {"currency", currency},   {"created_at", created},
          {"accepted_at", accepted}, {"delivered_at", delivered}};
}

inline std::vector<report_pickup> parsed(const json& list) {
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
inline json day_page1() {
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

inline json day_page2() {
  return {{"pickups",
           {pickup(5, "requested", nullptr, 2.5, "GHS", "2024-05-01T14:00:00Z"),
            pickup(6, "cancelled", nullptr, 1, "GHS", "2024-05-01T15:00:00Z"),
            pickup(7, "delivered", 5, 19.99, "GHS", "2024-05-01T09:00:00Z", "2024-05-01T09:30:00Z",
                   "2024-05-01T10:00:00Z")}},
          {"next", nullptr}};
}

inline json day_summary() {
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
inline void serve_two_pages(fake_server& django, json first, json second) {
  django.on("GET", analytics_path, [first, second](const recorded_request& r) {
    bool page2 = r.target.find("cursor=c2") != std::string::npos;
    return canned{200, (page2 ? second : first).dump()};
  });
}

inline void serve_one_page(fake_server& django, json pickups) {
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

inline std::string query(const std::string& from, const std::string& to) {
  auto enc = [](std::string s) {
    std::string out;
    for (char c : s) out += c == ':' ? std::string("%3A") : std::string(1, c);
    return out;
  };
  return std::string(analytics_path) + "?from=" + enc(from) + "&to=" + enc(to);
}

}  // namespace scheduler_fixture
