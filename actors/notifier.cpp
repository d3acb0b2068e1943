// sendPickupNotification: data check, recipients, tokens, pushes, result.
// The rules are documented once, in notifier.hpp.
#include "actors/notifier.hpp"

#include "actors/breaker.hpp"

#include <algorithm>
#include <cstdio>
#include <exception>

#include "actors/handler_support.hpp"
#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

using nlohmann::json;
using nodes::job_result;
using nodes::outcome;

std::optional<int64_t> positive_int(const json& data, const char* key) {
  auto it = data.find(key);
  if (it == data.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned()) {
    auto u = it->get<uint64_t>();
    if (u == 0 || u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  int64_t v = it->get<int64_t>();
  if (v <= 0) return std::nullopt;
  return v;
}

bool present(const json& data, const char* key) {
  auto it = data.find(key);
  return it != data.end() && !it->is_null();
}

bool one_of(const std::string& v, std::initializer_list<const char*> options) {
  return std::any_of(options.begin(), options.end(), [&](const char* o) { return v == o; });
}

std::string format_amount(const json& price) {
  if (!price.is_number()) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", price.get<double>());
  return buf;
}

}  // namespace

struct notifier_handler::request {
  std::string notification_type;
  std::string user_type;
  std::optional<int64_t> pickup_id;  ///< all types but daily_report
  json report_id;                    ///< daily_report only: int or string
  std::optional<int64_t> user_id;
  std::optional<std::string> reason;
};

/// What happened to the pushes of one job.
struct notifier_handler::tally {
  int sent = 0;
  int failed = 0;
  int failed_transient = 0;
  int failed_circuit = 0;  ///< of those, not sent because the breaker was open
  int invalid_tokens = 0;
  std::optional<int64_t> retry_after_ms;  ///< the largest a provider asked for
  std::string first_error;
};

notifier_handler::notifier_handler(std::unique_ptr<django_client> django,
                                   std::unique_ptr<push_provider> provider,
                                   std::shared_ptr<const templates> texts)
    : django_(std::move(django)), provider_(std::move(provider)), texts_(std::move(texts)) {}

job_result notifier_handler::run(const nodes::job& j) {
  return guarded_run("notifier", j, [this](const nodes::job& job) { return run_checked(job); });
}

std::optional<job_result> notifier_handler::parse(const json& data, request& out) {
  if (!data.is_object()) return invalid_data("", "must be a map");
  auto type = data.find("notification_type");
  if (type == data.end() || !type->is_string()) return invalid_data("notification_type", "is required");
  out.notification_type = type->get<std::string>();
  const auto& types = notification_types();
  if (std::find(types.begin(), types.end(), out.notification_type) == types.end())
    return invalid_data("notification_type", "\"" + out.notification_type + "\" is not a known type");

  auto user_type = data.find("user_type");
  if (user_type == data.end() || !user_type->is_string()) return invalid_data("user_type", "is required");
  out.user_type = user_type->get<std::string>();
  if (!one_of(out.user_type, {"customer", "worker", "admin"}))
    return invalid_data("user_type", "must be customer, worker or admin");

  if (out.notification_type == "daily_report") {
    auto report = data.find("report_id");
    bool ok = report != data.end() &&
              ((report->is_number_integer() && positive_int(data, "report_id")) ||
               (report->is_string() && !report->get<std::string>().empty()));
    if (!ok) return invalid_data("report_id", "is required for daily_report (a positive int or a string)");
    out.report_id = *report;
  } else {
    out.pickup_id = positive_int(data, "pickup_id");
    if (!out.pickup_id) return invalid_data("pickup_id", "must be a positive integer");
  }

  if (present(data, "user_id")) {
    out.user_id = positive_int(data, "user_id");
    if (!out.user_id) return invalid_data("user_id", "must be a positive integer or null");
  }
  if (auto reason = data.find("reason"); reason != data.end() && reason->is_string())
    out.reason = reason->get<std::string>();
  return std::nullopt;
}

job_result notifier_handler::run_checked(const nodes::job& j) {
  request r;
  if (auto bad = parse(j.data, r)) return *bad;

  std::optional<pickup_info> pickup;
  if (r.pickup_id) {
    auto p = django_->get_pickup(*r.pickup_id);
    if (!p) return p.error;
    pickup = *p;
  }

  auto users = recipients(r, pickup);
  if (!users) return users.error;

  template_values values;
  json data{{"notification_type", r.notification_type}};
  fill_values(r, pickup, values, data);
  auto text = texts_->render(r.notification_type, values);
  if (!text) return invalid_data("notification_type", "has no template");  // parse() checked it

  std::vector<push> pushes;
  for (int64_t user : *users) {
    if (auto failed = collect_pushes(j, r, user, *text, data, pushes)) return *failed;
  }
  auto results = send_guarded(pushes);
  tally t;
  for (size_t i = 0; i < pushes.size(); ++i) {
    // A provider that answered fewer results than pushes has a bug; what it
    // did not answer for counts as a transient failure rather than a crash.
    record(j, pushes[i],
           i < results.size() ? results[i]
                              : push_result::fail(push_result::status::transient,
                                                  "The push provider gave no result for this push."),
           t);
  }
  return result_of(t, *users);
}

void notifier_handler::fill_values(const request& r, const std::optional<pickup_info>& pickup,
                                   template_values& values, json& data) {
  if (r.pickup_id) {
    values["pickup_id"] = std::to_string(*r.pickup_id);
    data["pickup_id"] = *r.pickup_id;
  } else {
    values["report_id"] = r.report_id.is_string() ? r.report_id.get<std::string>() : r.report_id.dump();
    data["report_id"] = r.report_id;
  }
  if (pickup) {
    values["amount"] = format_amount(pickup->price);
    values["currency"] = pickup->currency;
  }
  values["reason"] = r.reason && !r.reason->empty() ? *r.reason : "no reason given";
  if (r.reason) data["reason"] = *r.reason;
}

std::vector<push_result> notifier_handler::send_guarded(const std::vector<push>& pushes) {
  // One batch for the whole job: the provider sends its pushes concurrently,
  // unless its circuit breaker is open (actors/breaker.hpp). The `log` provider
  // writes a file and has none.
  std::vector<push_result> results;
  const bool guarded = provider_->name() != "log" && !pushes.empty();
  int64_t retry_in_ms = 0;
  if (guarded && !breaker_for(provider_->name()).allow(retry_in_ms)) {
    for (size_t i = 0; i < pushes.size(); ++i) {
      auto r = push_result::fail(push_result::status::transient,
                                 "not sent: the " + std::string(provider_->name()) +
                                     " circuit breaker is open after repeated failures");
      r.circuit_open = true;
      r.retry_after_ms = std::max<int64_t>(retry_in_ms, 100);
      results.push_back(std::move(r));
    }
    return results;
  }
  results = provider_->send_all(pushes);
  if (guarded) {
    bool any_ok = false, any_failure = false;
    for (auto& r : results) {
      if (r.circuit_open) continue;  // not sent (a Retry-After pause): no news of the provider
      if (r.kind == push_result::status::transient) any_failure = true;
      else any_ok = true;
    }
    // One batch is one call for the breaker: down when nothing got through.
    if (any_ok || any_failure) breaker_for(provider_->name()).record(any_failure && !any_ok);
  }
  return results;
}

job_result notifier_handler::result_of(const tally& t, const std::vector<int64_t>& users) const {
  int attempted = t.sent + t.failed + t.invalid_tokens;
  if (attempted > 0 && t.sent == 0 && t.failed_circuit > 0 && t.failed_circuit == t.failed) {
    job_result f = job_result::deferred(0, "No push was sent: the " + std::string(provider_->name()) +
                                               " circuit breaker is open; the job waits without using an attempt.");
    f.retry_after_ms = t.retry_after_ms;  // the longest wait of its pushes
    return f;
  }
  if (attempted > 0 && t.sent == 0 && t.failed_transient > 0) {
    job_result f = job_result::failure(
        outcome::transient, "push_failed",
        "No push was delivered and " + std::to_string(t.failed_transient) +
            " failed transiently (first error: " + t.first_error + "); the job will be retried.");
    f.retry_after_ms = t.retry_after_ms;
    return f;
  }
  if (attempted > 0 && t.sent == 0 && t.invalid_tokens == 0) {
    return job_result::failure(outcome::permanent, "push_rejected",
                               "The push provider rejected all " + std::to_string(t.failed) +
                                   " pushes (first error: " + t.first_error + ").");
  }
  return job_result::success({{"sent", t.sent},
                              {"failed", t.failed},
                              {"invalid_tokens", t.invalid_tokens},
                              {"recipients", users}});
}

api_result<std::vector<int64_t>> notifier_handler::recipients(
    const request& r, const std::optional<pickup_info>& pickup) {
  using result = api_result<std::vector<int64_t>>;
  if (r.user_id) return result::ok({*r.user_id});
  if (r.notification_type == "daily_report" || r.user_type == "admin") {
    auto admins = django_->get_admins();
    if (!admins) return result::fail(admins.error);
    std::vector<int64_t> ids;
    for (const auto& a : *admins)
      if (std::find(ids.begin(), ids.end(), a.id) == ids.end()) ids.push_back(a.id);
    return result::ok(std::move(ids));
  }
  if (r.user_type == "customer") return result::ok({pickup->customer_id});
  // worker
  if (pickup->worker_id) return result::ok({*pickup->worker_id});
  if (r.notification_type != "pickup_requested") {
    log::warning("notifier", "no worker to notify: the pickup has no worker",
                 {{"pickup_id", pickup->id}, {"notification_type", r.notification_type}});
  }
  return result::ok({});
}

std::optional<job_result> notifier_handler::collect_pushes(const nodes::job& j, const request& r,
                                                           int64_t user_id,
                                                           const message_template& text,
                                                           const json& data,
                                                           std::vector<push>& pushes) {
  auto tokens = django_->get_tokens(user_id);
  if (!tokens) {
    if (tokens.error.kind == outcome::permanent && tokens.error.http_status == 404) {
      log::info("notifier", "recipient unknown to Django; skipped",
                {{"job_id", j.id}, {"user_id", user_id}});
      return std::nullopt;
    }
    return tokens.error;
  }
  for (const auto& tok : *tokens)
    pushes.push_back(
        {j.id, user_id, tok.token, tok.platform, r.notification_type, text.title, text.body, data});
  return std::nullopt;
}

void notifier_handler::record(const nodes::job& j, const push& p, const push_result& res, tally& t) {
  switch (res.kind) {
    case push_result::status::delivered:
      ++t.sent;
      break;
    case push_result::status::invalid_token: {
      ++t.invalid_tokens;
      job_result del = django_->delete_token(p.user_id, p.token);
      log::info("notifier", "invalid push token removed",
                {{"job_id", j.id}, {"user_id", p.user_id}, {"token", log::redact(p.token)},
                 {"deleted", del.kind == outcome::ok}, {"error", del.message}});
      break;
    }
    case push_result::status::transient:
    case push_result::status::permanent:
      ++t.failed;
      if (res.kind == push_result::status::transient) {
        ++t.failed_transient;
        if (res.circuit_open) ++t.failed_circuit;
        if (res.retry_after_ms)
          t.retry_after_ms = std::max(t.retry_after_ms.value_or(0), *res.retry_after_ms);
      }
      if (t.first_error.empty()) t.first_error = res.error;
      log::warning("notifier", "push failed",
                   {{"job_id", j.id}, {"user_id", p.user_id}, {"provider", provider_->name()},
                    {"outcome", to_string(res.kind)}, {"error", res.error}});
      break;
  }
}

}  // namespace klynaa::actors
