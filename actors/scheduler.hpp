// The scheduler actor's job logic (docs/events-and-functions.md, "generateDailyReport,
// generateWeeklyAnalytics, cleanupData (scheduler)"): `generateDailyReport`,
// `generateWeeklyAnalytics` and `cleanupData`. The broker fires them from the
// [[schedule]] entries (broker/cron.hpp); they can also be invoked by name.
//
// Data (validated by the broker's ingress, checked again here with the same
// table, protocol::validate_data, because schedule `data` comes from config; a
// bad field is a permanent failure "invalid_data" naming it):
//   generateDailyReport      date        YYYY-MM-DD; default: the UTC day before
//                                        the job's `ts`
//   generateWeeklyAnalytics  week_start  YYYY-MM-DD, a Monday; default: the Monday
//                                        of the last full week (Monday-Sunday,
//                                        UTC) before the job's `ts`
//   cleanupData              older_than_days  non-negative int; default 90
// The defaults count from the job's `ts` (for a scheduled firing, when it was
// due; for an invoke without `ts`, when the broker received it), not from the
// moment the attempt runs, so a retry after midnight reports the same period.
// A job with ts 0 uses the clock.
//
// generateDailyReport, for the UTC day D:
//  1. GET /api/analytics/pickups/?from=DT00:00:00Z&to=(D+1)T00:00:00Z, then the
//     same with &cursor=… while the answer's `next` is not null (a cursor seen
//     twice is a bad_response). Pickups are deduplicated by id.
//  2. POST /api/reports/ with header `Idempotency-Key: report-daily-D` and body
//       {"kind": "daily", "period_start": "DT00:00:00Z",
//        "period_end": "(D+1)T00:00:00Z", "summary": S}
//     where S is daily_summary() of the pickups (exactly the keys the docs list).
//  3. Result {"report_id": id, "pickups": n} with one child job
//       id "#daily-report-D", function sendPickupNotification,
//       data {"report_id": id, "notification_type": "daily_report",
//             "user_type": "admin"}.
//
// generateWeeklyAnalytics, for the 7 UTC days from Monday W:
//  1. The pickups as above with from = WT00:00:00Z and to = (W+7)T00:00:00Z,
//     and GET /api/workers/available/.
//  2. POST /api/reports/ with `Idempotency-Key: report-weekly-W` and
//       {"kind": "weekly", "period_start", "period_end", "summary": S}
//     where S = daily_summary() + "per_day" (7 × {"date", "pickups"}, by the UTC
//     date of created_at) + "service_areas" (service_areas()).
//  3. Result {"report_id": id, "pickups": n}; no child job.
//
// cleanupData: POST /api/cleanup/ {"older_than_days": n}; result
// {"deleted": n, "pruned": 0}. This handler runs on a node without access to the
// store; when the success reaches the broker, the broker prunes its finished-job
// records and dedup keys and sets "pruned" (broker/core.cpp start_prune).
//
// Failures: Django calls per classify() (http.hpp): no answer, 408, 429, 5xx →
// transient; any other 4xx → permanent. A 2xx whose body is not the documented
// JSON — including a pickup or worker entry without the fields a report needs
// (see parse_report_pickup / parse_coverage_worker), or a report id that is not a
// positive integer or non-empty string — is a transient "bad_response", as in
// django_client.hpp. A retry posts the same report again with the same
// Idempotency-Key, so Django keeps one report per period and kind.
//
// Threading: one handler per worker thread (it owns a django_client). The pure
// functions below are thread-safe and never throw except bad_alloc.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/django_client.hpp"
#include "nodes/job.hpp"

namespace klynaa::actors {

/// The fields of one pickup object (docs/events-and-functions.md, "The Django API")
/// that the reports read.
struct report_pickup {
  int64_t id = 0;
  std::string status;
  std::optional<int64_t> worker_id;
  std::optional<double> lat, lng;      ///< absent when not numbers
  std::optional<int64_t> price_cents;  ///< price × 100, rounded; absent when not a number
  std::string currency;                ///< "" when absent
  int64_t created_at_ms = 0;           ///< ms since the epoch, UTC
  std::optional<int64_t> accepted_at_ms;
  std::optional<int64_t> delivered_at_ms;
};

/// Reads one entry of GET /api/analytics/pickups/, or says what is wrong with it
/// (a sentence naming the pickup and field). Required: an object with an integer
/// `id`, a string `status` and an ISO 8601 `created_at`; `accepted_at` and
/// `delivered_at` are null or ISO 8601; `worker_id` null or an integer. A pickup
/// with `delivered_at` set must also have a numeric `price` and a string
/// `currency` (revenue needs them). Times are ISO 8601 as Django writes them:
/// `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z`, `±HH:MM` or nothing (UTC).
std::variant<report_pickup, std::string> parse_report_pickup(const nlohmann::json& p);

/// ms since the epoch of an ISO 8601 time as parse_report_pickup accepts it.
std::optional<int64_t> parse_iso_time_ms(const std::string& text);

/// The summary keys of the daily report (docs/events-and-functions.md, "generateDailyReport,
/// generateWeeklyAnalytics, cleanupData (scheduler)") over `pickups`, exactly these:
///  - "pickups_by_status": {status: count}, statuses without pickups left out;
///  - "delivered_revenue": {currency: total}, over pickups with delivered_at set,
///    summed in integer cents and written as the JSON number cents / 100
///    (0.1 + 0.2 is written 0.3: exact to 2 decimals, shortest form);
///  - "mean_minutes_to_accept": mean of accepted_at - created_at in minutes over
///    pickups with both, rounded to 2 decimals; null when there are none;
///  - "mean_minutes_to_deliver": the same for delivered_at - accepted_at;
///  - "top_workers": up to 10 {"worker_id", "delivered"} over pickups with
///    delivered_at and worker_id set, most deliveries first, then worker id
///    ascending.
nlohmann::json daily_summary(const std::vector<report_pickup>& pickups);

/// An available worker of GET /api/workers/available/.
struct coverage_worker {
  int64_t id = 0;
  double lat = 0;
  double lng = 0;
  double service_radius_km = 0;
};

/// Reads one entry of GET /api/workers/available/, or says what is wrong with
/// it. Required: integer `id`, `lat` in [-90, 90], `lng` in [-180, 180]. A
/// missing, null or non-positive `service_radius_km` becomes `default_radius_km`
/// (config geo.radius_km, as the geo index does).
std::variant<coverage_worker, std::string> parse_coverage_worker(const nlohmann::json& w,
                                                                 double default_radius_km);

/// The weekly "service_areas" value: {"cells": [...], "uncovered": [...]}.
///  - cells: one {"geohash", "pickups", "workers"} per geohash-5 cell that has at
///    least one pickup (pickups without a location are left out), most pickups
///    first, ties by geohash ascending; "workers" counts the workers whose
///    great-circle distance to the cell's centre is at most their
///    service_radius_km;
///  - uncovered: the geohashes of the first 10 cells (in that order) with
///    "workers" 0.
nlohmann::json service_areas(const std::vector<report_pickup>& pickups,
                             const std::vector<coverage_worker>& workers);

/// The child job that tells the admins about a daily report (see above).
nodes::child_job daily_report_notification(const std::string& date, const nlohmann::json& report_id);

class scheduler_handler : public nodes::job_handler {
 public:
  /// `default_radius_km`: the service radius of a worker Django lists without
  /// one (config geo.radius_km). `now_ms`: the clock for jobs with ts 0
  /// (default: the system clock); tests pass a fixed one.
  explicit scheduler_handler(std::unique_ptr<django_client> django, double default_radius_km = 5.0,
                             std::function<int64_t()> now_ms = {});

  /// Runs one generateDailyReport, generateWeeklyAnalytics or cleanupData job as
  /// described above; another function is a permanent "unknown_function".
  /// Never throws.
  nodes::job_result run(const nodes::job& j) override;

 private:
  nodes::job_result run_checked(const nodes::job& j);
  nodes::job_result daily_report(const nodes::job& j, const nlohmann::json& data);
  nodes::job_result weekly_analytics(const nodes::job& j, const nlohmann::json& data);
  nodes::job_result cleanup_data(const nodes::job& j, const nlohmann::json& data);

  /// Every pickup created in [from, to), following `next`; or the failure.
  api_result<std::vector<report_pickup>> fetch_pickups(const std::string& from,
                                                       const std::string& to);
  api_result<std::vector<coverage_worker>> fetch_workers();
  /// POST /api/reports/ with the Idempotency-Key; the value is the report id.
  api_result<nlohmann::json> post_report(const nlohmann::json& report,
                                         const std::string& idempotency_key);
  /// The job's ts in ms, or the clock when it has none.
  int64_t reference_ms(const nodes::job& j) const;

  std::unique_ptr<django_client> django_;
  double default_radius_km_;
  std::function<int64_t()> now_ms_;
};

}  // namespace klynaa::actors
