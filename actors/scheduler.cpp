// generateDailyReport, generateWeeklyAnalytics and cleanupData: read pickups
// from Django, summarise them, post the report. The rules are documented once,
// in scheduler.hpp.
#include "actors/scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <map>
#include <set>

#include <date/date.h>

#include "actors/geohash.hpp"
#include "protocol/jobs.hpp"
#include "protocol/log.hpp"
#include "protocol/validate.hpp"

namespace klynaa::actors {
namespace {

using nlohmann::json;
using nodes::job_result;
using nodes::outcome;

constexpr std::string_view component = "scheduler";
constexpr size_t max_pages = 100000;  ///< a guard against a `next` that never ends
constexpr size_t max_top_workers = 10;
constexpr size_t max_uncovered = 10;
constexpr int cell_precision = 5;

// ------------------------------------------------------------------ dates

/// "YYYY-MM-DD" of a day.
std::string day_text(date::sys_days d) { return date::format("%F", d); }

/// "YYYY-MM-DDT00:00:00Z" of a day's start.
std::string midnight_text(date::sys_days d) { return day_text(d) + "T00:00:00Z"; }

/// The day of a "YYYY-MM-DD" that validate_data has already accepted.
date::sys_days parse_day(const std::string& s) {
  int y = std::stoi(s.substr(0, 4));
  unsigned m = static_cast<unsigned>(std::stoi(s.substr(5, 2)));
  unsigned d = static_cast<unsigned>(std::stoi(s.substr(8, 2)));
  return date::sys_days{date::year{y} / date::month{m} / date::day{d}};
}

date::sys_days day_of_ms(int64_t ms) {
  return date::floor<date::days>(date::sys_time<std::chrono::milliseconds>{std::chrono::milliseconds{ms}});
}

/// Reads exactly `n` digits at `s[i]`.
bool digits(const std::string& s, size_t i, size_t n, int& out) {
  if (i + n > s.size()) return false;
  int v = 0;
  for (size_t k = i; k < i + n; ++k) {
    if (s[k] < '0' || s[k] > '9') return false;
    v = v * 10 + (s[k] - '0');
  }
  out = v;
  return true;
}

// --------------------------------------------------------------- pickups

job_result invalid(const std::string& message) {
  return job_result::failure(outcome::permanent, "invalid_data", message);
}

std::optional<int64_t> int_field(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    return std::nullopt;
  return it->get<int64_t>();
}

std::optional<double> number_field(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_number()) return std::nullopt;
  double d = it->get<double>();
  return std::isfinite(d) ? std::optional<double>(d) : std::nullopt;
}

/// A time field: absent/null → nothing; an ISO string → its ms; else an error.
bool time_field(const json& p, const char* key, std::optional<int64_t>& out, std::string& error) {
  auto it = p.find(key);
  if (it == p.end() || it->is_null()) return true;
  if (it->is_string()) {
    out = parse_iso_time_ms(it->get<std::string>());
    if (out) return true;
  }
  error = std::string(key) + " is neither null nor an ISO 8601 time (got " + it->dump() + ")";
  return false;
}

/// price × 100 as integer cents, rounded half away from zero.
std::optional<int64_t> cents_of(const json& price) {
  if (price.is_number_integer()) {
    if (price.is_number_unsigned() && price.get<uint64_t>() > 1000000000000000ULL) return std::nullopt;
    int64_t v = price.get<int64_t>();
    if (v > 1000000000000000LL || v < -1000000000000000LL) return std::nullopt;
    return v * 100;
  }
  if (!price.is_number_float()) return std::nullopt;
  double d = price.get<double>();
  if (!std::isfinite(d) || std::fabs(d) > 1e13) return std::nullopt;
  return static_cast<int64_t>(std::llround(d * 100.0));
}

/// The JSON number for an amount in cents: the double nearest cents / 100,
/// which nlohmann writes in its shortest form (30 cents → 0.3).
json money(int64_t cents) { return json(static_cast<double>(cents) / 100.0); }

/// Mean of `total_ms` over `n` in minutes, rounded to 2 decimals; null when n == 0.
json mean_minutes(int64_t total_ms, int64_t n) {
  if (n == 0) return json();
  double minutes = static_cast<double>(total_ms) / static_cast<double>(n) / 60000.0;
  return json(std::round(minutes * 100.0) / 100.0);
}

// ---------------------------------------------------------------- failures

/// A 2xx answer whose content a report cannot use (see scheduler.hpp).
job_result bad_answer(std::string_view what, const std::string& detail) {
  return bad_response(200, "django", what, detail);
}

job_result failure_from_exception(const nodes::job& j, const char* what) {
  log::error(component, "unexpected exception", {{"job_id", j.id}, {"error", what}});
  return job_result::failure(outcome::transient, "internal",
                             std::string("The scheduler actor failed unexpectedly: ") + what);
}

}  // namespace

// ---------------------------------------------------------------- parsing

std::optional<int64_t> parse_iso_time_ms(const std::string& s) {
  int y, mo, d, h, mi, sec;
  if (!digits(s, 0, 4, y) || s.size() < 19 || s[4] != '-' || !digits(s, 5, 2, mo) || s[7] != '-' ||
      !digits(s, 8, 2, d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !digits(s, 11, 2, h) || s[13] != ':' || !digits(s, 14, 2, mi) || s[16] != ':' ||
      !digits(s, 17, 2, sec))
    return std::nullopt;
  const date::year_month_day ymd{date::year{y} / date::month{static_cast<unsigned>(mo)} /
                                 date::day{static_cast<unsigned>(d)}};
  if (!ymd.ok() || h > 23 || mi > 59 || sec > 60) return std::nullopt;
  size_t i = 19;
  int64_t ms = 0;
  if (i < s.size() && s[i] == '.') {
    size_t start = ++i;
    int64_t scale = 100;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      ms += (s[i] - '0') * scale;
      scale /= 10;
      ++i;
    }
    if (i == start) return std::nullopt;
  }
  int64_t offset_min = 0;
  if (i < s.size()) {
    if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == s.size()) {
      // UTC
    } else if (s[i] == '+' || s[i] == '-') {
      int oh, om;
      bool colon = i + 3 < s.size() && s[i + 3] == ':';
      if (!digits(s, i + 1, 2, oh) || !digits(s, i + (colon ? 4 : 3), 2, om) ||
          i + (colon ? 6 : 5) != s.size() || oh > 23 || om > 59)
        return std::nullopt;
      offset_min = (s[i] == '-' ? -1 : 1) * (oh * 60 + om);
    } else {
      return std::nullopt;
    }
  }
  auto t = date::sys_days{ymd} + std::chrono::hours{h} + std::chrono::minutes{mi} +
           std::chrono::seconds{sec} + std::chrono::milliseconds{ms} -
           std::chrono::minutes{offset_min};
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

std::variant<report_pickup, std::string> parse_report_pickup(const json& p) {
  if (!p.is_object()) return std::string("a pickup entry is not an object");
  report_pickup r;
  auto id = int_field(p, "id");
  if (!id) return std::string("a pickup entry has no integer id");
  r.id = *id;
  const std::string who = "pickup " + std::to_string(r.id) + ": ";
  auto status = p.find("status");
  if (status == p.end() || !status->is_string()) return who + "status is missing or not a string";
  r.status = status->get<std::string>();
  auto worker = p.find("worker_id");
  if (worker != p.end() && !worker->is_null()) {
    auto w = int_field(p, "worker_id");
    if (!w) return who + "worker_id is neither null nor an integer";
    r.worker_id = w;
  }
  std::string error;
  std::optional<int64_t> created;
  if (!time_field(p, "created_at", created, error)) return who + error;
  if (!created) return who + "created_at is missing";
  r.created_at_ms = *created;
  if (!time_field(p, "accepted_at", r.accepted_at_ms, error) ||
      !time_field(p, "delivered_at", r.delivered_at_ms, error))
    return who + error;
  r.lat = number_field(p, "lat");
  r.lng = number_field(p, "lng");
  if (r.lat && (*r.lat < -90 || *r.lat > 90)) r.lat.reset();
  if (r.lng && (*r.lng < -180 || *r.lng > 180)) r.lng.reset();
  auto price = p.find("price");
  if (price != p.end()) r.price_cents = cents_of(*price);
  auto currency = p.find("currency");
  if (currency != p.end() && currency->is_string()) r.currency = currency->get<std::string>();
  if (r.delivered_at_ms) {
    if (!r.price_cents) return who + "delivered, but price is missing or not a number";
    if (r.currency.empty()) return who + "delivered, but currency is missing or not a string";
  }
  return r;
}

std::variant<coverage_worker, std::string> parse_coverage_worker(const json& w,
                                                                 double default_radius_km) {
  if (!w.is_object()) return std::string("a worker entry is not an object");
  coverage_worker c;
  auto id = int_field(w, "id");
  if (!id) return std::string("a worker entry has no integer id");
  c.id = *id;
  const std::string who = "worker " + std::to_string(c.id) + ": ";
  auto lat = number_field(w, "lat");
  auto lng = number_field(w, "lng");
  if (!lat || *lat < -90 || *lat > 90) return who + "lat is missing or not a latitude";
  if (!lng || *lng < -180 || *lng > 180) return who + "lng is missing or not a longitude";
  c.lat = *lat;
  c.lng = *lng;
  auto radius = number_field(w, "service_radius_km");
  c.service_radius_km = radius && *radius > 0 ? *radius : default_radius_km;
  return c;
}

// --------------------------------------------------------------- summaries

json daily_summary(const std::vector<report_pickup>& pickups) {
  std::map<std::string, int64_t> by_status;
  std::map<std::string, int64_t> revenue_cents;
  std::map<int64_t, int64_t> delivered_by_worker;
  int64_t accept_ms = 0, accept_n = 0, deliver_ms = 0, deliver_n = 0;
  for (const auto& p : pickups) {
    ++by_status[p.status];
    if (p.accepted_at_ms) {
      accept_ms += *p.accepted_at_ms - p.created_at_ms;
      ++accept_n;
    }
    if (p.accepted_at_ms && p.delivered_at_ms) {
      deliver_ms += *p.delivered_at_ms - *p.accepted_at_ms;
      ++deliver_n;
    }
    if (p.delivered_at_ms) {
      revenue_cents[p.currency] += p.price_cents.value_or(0);
      if (p.worker_id) ++delivered_by_worker[*p.worker_id];
    }
  }

  json revenue = json::object();
  for (const auto& [currency, cents] : revenue_cents) revenue[currency] = money(cents);

  std::vector<std::pair<int64_t, int64_t>> workers(delivered_by_worker.begin(),
                                                   delivered_by_worker.end());
  std::sort(workers.begin(), workers.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  json top = json::array();
  for (size_t i = 0; i < workers.size() && i < max_top_workers; ++i)
    top.push_back({{"worker_id", workers[i].first}, {"delivered", workers[i].second}});

  return {{"pickups_by_status", json(by_status)},
          {"delivered_revenue", revenue},
          {"mean_minutes_to_accept", mean_minutes(accept_ms, accept_n)},
          {"mean_minutes_to_deliver", mean_minutes(deliver_ms, deliver_n)},
          {"top_workers", top}};
}

json service_areas(const std::vector<report_pickup>& pickups,
                   const std::vector<coverage_worker>& workers) {
  std::map<std::string, int64_t> demand;
  for (const auto& p : pickups)
    if (p.lat && p.lng) ++demand[geohash::encode(*p.lat, *p.lng, cell_precision)];

  struct row {
    std::string hash;
    int64_t pickups;
    int64_t workers;
  };
  std::vector<row> rows;
  for (const auto& [hash, n] : demand) {
    auto centre = geohash::decode(hash);  // always valid: we made it
    int64_t covering = 0;
    for (const auto& w : workers)
      if (geohash::great_circle_km(w.lat, w.lng, centre->lat, centre->lng) <= w.service_radius_km)
        ++covering;
    rows.push_back({hash, n, covering});
  }
  std::sort(rows.begin(), rows.end(), [](const row& a, const row& b) {
    return a.pickups != b.pickups ? a.pickups > b.pickups : a.hash < b.hash;
  });
  json cells = json::array(), uncovered = json::array();
  for (const auto& r : rows) {
    cells.push_back({{"geohash", r.hash}, {"pickups", r.pickups}, {"workers", r.workers}});
    if (r.workers == 0 && uncovered.size() < max_uncovered) uncovered.push_back(r.hash);
  }
  return {{"cells", cells}, {"uncovered", uncovered}};
}

nodes::child_job daily_report_notification(const std::string& date, const json& report_id) {
  nodes::child_job c;
  c.id = protocol::once_job_id("daily-report", date);
  c.function = "sendPickupNotification";
  c.data = {{"report_id", report_id}, {"notification_type", "daily_report"}, {"user_type", "admin"}};
  return c;
}

// ----------------------------------------------------------------- handler

scheduler_handler::scheduler_handler(std::unique_ptr<django_client> django,
                                     double default_radius_km, std::function<int64_t()> now_ms)
    : django_(std::move(django)), default_radius_km_(default_radius_km), now_ms_(std::move(now_ms)) {
  if (!now_ms_) {
    now_ms_ = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
}

job_result scheduler_handler::run(const nodes::job& j) {
  try {
    return run_checked(j);
  } catch (const std::exception& e) {  // our bug, not the input's: let the job retry
    return failure_from_exception(j, e.what());
  } catch (...) {
    return failure_from_exception(j, "unknown exception");
  }
}

int64_t scheduler_handler::reference_ms(const nodes::job& j) const {
  return j.ts_ms > 0 ? j.ts_ms : now_ms_();
}

job_result scheduler_handler::run_checked(const nodes::job& j) {
  // A schedule's `data = {}` may arrive as null; it means "all defaults".
  const json data = j.data.is_null() ? json::object() : j.data;
  if (j.function != "generateDailyReport" && j.function != "generateWeeklyAnalytics" &&
      j.function != "cleanupData")
    return job_result::failure(outcome::permanent, "unknown_function",
                               "The scheduler actor does not run \"" + j.function +
                                   "\"; it runs generateDailyReport, generateWeeklyAnalytics "
                                   "and cleanupData.");
  if (auto problem = protocol::validate_data(j.function, data)) return invalid(problem->message);
  if (j.function == "generateDailyReport") return daily_report(j, data);
  if (j.function == "generateWeeklyAnalytics") return weekly_analytics(j, data);
  return cleanup_data(j, data);
}

job_result scheduler_handler::daily_report(const nodes::job& j, const json& data) {
  const date::sys_days day = data.contains("date") && data["date"].is_string()
                                 ? parse_day(data["date"].get<std::string>())
                                 : day_of_ms(reference_ms(j)) - date::days{1};
  const std::string from = midnight_text(day), to = midnight_text(day + date::days{1});
  auto pickups = fetch_pickups(from, to);
  if (!pickups) return pickups.error;

  json report = {{"kind", "daily"},
                 {"period_start", from},
                 {"period_end", to},
                 {"summary", daily_summary(*pickups)}};
  auto id = post_report(report, "report-daily-" + day_text(day));
  if (!id) return id.error;

  job_result ok = job_result::success({{"report_id", *id}, {"pickups", pickups->size()}});
  ok.children.push_back(daily_report_notification(day_text(day), *id));
  log::info(component, "daily report posted",
            {{"job_id", j.id}, {"date", day_text(day)}, {"report_id", *id},
             {"pickups", pickups->size()}});
  return ok;
}

job_result scheduler_handler::weekly_analytics(const nodes::job& j, const json& data) {
  date::sys_days monday;
  if (data.contains("week_start") && data["week_start"].is_string()) {
    monday = parse_day(data["week_start"].get<std::string>());
  } else {
    const date::sys_days today = day_of_ms(reference_ms(j));
    const unsigned since_monday = (date::weekday{today}.c_encoding() + 6) % 7;
    monday = today - date::days{since_monday} - date::days{7};
  }
  const date::sys_days end = monday + date::days{7};
  const std::string from = midnight_text(monday), to = midnight_text(end);
  auto pickups = fetch_pickups(from, to);
  if (!pickups) return pickups.error;
  auto workers = fetch_workers();
  if (!workers) return workers.error;

  json summary = daily_summary(*pickups);
  std::map<date::sys_days, int64_t> per_day_count;
  for (const auto& p : *pickups) ++per_day_count[day_of_ms(p.created_at_ms)];
  json per_day = json::array();
  for (date::sys_days d = monday; d < end; d += date::days{1})
    per_day.push_back({{"date", day_text(d)}, {"pickups", per_day_count[d]}});
  summary["per_day"] = per_day;
  summary["service_areas"] = service_areas(*pickups, *workers);

  json report = {{"kind", "weekly"}, {"period_start", from}, {"period_end", to}, {"summary", summary}};
  auto id = post_report(report, "report-weekly-" + day_text(monday));
  if (!id) return id.error;
  log::info(component, "weekly analytics posted",
            {{"job_id", j.id}, {"week_start", day_text(monday)}, {"report_id", *id},
             {"pickups", pickups->size()}, {"workers", workers->size()}});
  return job_result::success({{"report_id", *id}, {"pickups", pickups->size()}});
}

job_result scheduler_handler::cleanup_data(const nodes::job& j, const json& data) {
  int64_t days = 90;
  if (data.contains("older_than_days") && data["older_than_days"].is_number_integer())
    days = data["older_than_days"].get<int64_t>();
  auto deleted = django_->cleanup(days);
  if (!deleted) return deleted.error;
  log::info(component, "cleanup done",
            {{"job_id", j.id}, {"older_than_days", days}, {"deleted", *deleted}});
  // "pruned": the broker prunes its own store; see scheduler.hpp.
  return job_result::success({{"deleted", *deleted}, {"pruned", 0}});
}

api_result<std::vector<report_pickup>> scheduler_handler::fetch_pickups(const std::string& from,
                                                                        const std::string& to) {
  using result = api_result<std::vector<report_pickup>>;
  const std::string what = "GET /api/analytics/pickups/";
  std::vector<report_pickup> out;
  std::set<int64_t> seen_ids;
  std::set<std::string> seen_cursors;
  std::optional<std::string> cursor;
  for (size_t page = 0; page < max_pages; ++page) {
    auto answer = django_->get_analytics_pickups(from, to, cursor);
    if (!answer) return result::fail(std::move(answer.error));
    for (const auto& entry : answer->pickups) {
      auto parsed = parse_report_pickup(entry);
      if (auto* problem = std::get_if<std::string>(&parsed))
        return result::fail(bad_answer(what, *problem));
      auto& p = std::get<report_pickup>(parsed);
      if (seen_ids.insert(p.id).second) out.push_back(std::move(p));
    }
    if (!answer->next) return result::ok(std::move(out));
    if (!seen_cursors.insert(*answer->next).second)
      return result::fail(bad_answer(what, "next repeats the cursor \"" + *answer->next + "\""));
    cursor = answer->next;
  }
  return result::fail(bad_answer(what, "more than " + std::to_string(max_pages) + " pages"));
}

api_result<std::vector<coverage_worker>> scheduler_handler::fetch_workers() {
  using result = api_result<std::vector<coverage_worker>>;
  auto answer = django_->get_available_workers();
  if (!answer) return result::fail(std::move(answer.error));
  std::vector<coverage_worker> out;
  for (const auto& entry : *answer) {
    auto parsed = parse_coverage_worker(entry, default_radius_km_);
    if (auto* problem = std::get_if<std::string>(&parsed))
      return result::fail(bad_answer("GET /api/workers/available/", *problem));
    out.push_back(std::get<coverage_worker>(parsed));
  }
  return result::ok(std::move(out));
}

api_result<json> scheduler_handler::post_report(const json& report,
                                                const std::string& idempotency_key) {
  using result = api_result<json>;
  const std::string what = "POST /api/reports/";
  http_response r = django_->request("POST", "/api/reports/", report,
                                     {{"Idempotency-Key", idempotency_key}});
  job_result c = classify(r, what);
  if (c.kind != outcome::ok) return result::fail(std::move(c));
  json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return result::fail(bad_response(r.status, "django", what, "not JSON"));
  auto id = body.is_object() ? body.find("id") : body.end();
  const bool usable =
      body.is_object() && id != body.end() &&
      ((id->is_number_unsigned() && id->get<uint64_t>() > 0 &&
        id->get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX)) ||
       (id->is_number_integer() && !id->is_number_unsigned() && id->get<int64_t>() > 0) ||
       (id->is_string() && !id->get<std::string>().empty()));
  if (!usable)
    return result::fail(bad_response(r.status, "django", what,
                                     "id is missing or not a positive integer or string"));
  return result::ok(*id);
}

}  // namespace klynaa::actors
