// The Django API client: the standard headers, the JSON on the wire, and one
// small parser per documented answer. Parsers never throw: they check each type
// before reading and turn anything undocumented into bad_response().
#include "actors/django_client.hpp"

#include "actors/breaker.hpp"

#include <chrono>

#include "protocol/log.hpp"

namespace klynaa::actors {
namespace {

using nlohmann::json;
using nodes::job_result;
using nodes::outcome;

constexpr std::string_view service = "django";

std::string strip_trailing_slashes(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

http_options options_from(const protocol::config::django_section& cfg, std::shared_ptr<http_loop> loop) {
  http_options o;
  o.loop = std::move(loop);
  o.downstream = "django";
  o.connect_timeout_ms = cfg.connect_timeout_ms > 0 ? cfg.connect_timeout_ms : 2000;
  o.timeout_ms = cfg.timeout_ms > 0 ? cfg.timeout_ms : 10000;
  o.ca_file = cfg.ca_file;
  return o;
}

std::optional<int64_t> get_int(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

std::optional<std::string> get_string(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

json get_or_null(const json& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() ? json() : *it;
}

std::string what_of(std::string_view method, const std::string& path) {
  return std::string(method) + " " + path;
}

}  // namespace

django_client::django_client(const protocol::config::django_section& cfg, std::shared_ptr<http_loop> loop)
    : base_url_(strip_trailing_slashes(cfg.url)), api_key_(cfg.api_key), http_(options_from(cfg, std::move(loop))) {}

std::string django_client::key_hint() const { return log::redact(api_key_); }

http_response django_client::request(std::string_view method, const std::string& path,
                                     const std::optional<json>& body,
                                     const std::vector<http_header>& extra) {
  if (base_url_.empty()) {
    http_response r;
    r.error = "django.url (DJANGO_API_URL) is not configured";
    count_downstream(service, outcome_label(r));
    return r;
  }
  std::vector<http_header> headers{{"Authorization", "Api-Key " + api_key_},
                                   {"Accept", "application/json"}};
  std::optional<std::string> payload;
  if (body) {
    headers.push_back({"Content-Type", "application/json"});
    // replace: a stray invalid UTF-8 byte must not throw (nlohmann's default).
    payload = body->dump(-1, ' ', false, json::error_handler_t::replace);
  }
  for (const auto& h : extra) headers.push_back(h);

  auto& breaker = breaker_for(service);
  int64_t retry_in_ms = 0;
  if (!breaker.allow(retry_in_ms)) {
    http_response refused;
    refused.error = "not sent: the django circuit breaker is open";
    refused.circuit_open_ms = retry_in_ms;
    return refused;
  }
  auto start = std::chrono::steady_clock::now();
  http_response r = http_.request(method, base_url_ + path, headers, payload);
  // A request the node cancelled (job timeout, stop) or never sent (a
  // Retry-After pause, docs/reliability.md) says nothing about Django's health.
  if (!not_an_answer(r)) breaker.record(breaker_failure(r.status));
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - start)
                .count();
  count_downstream(service, outcome_label(r));
  if (r.status == 0 || r.status >= 500) {
    log::warning("django", "request failed",
                 {{"method", method}, {"path", path}, {"status", r.status},
                  {"error", r.error}, {"duration_ms", ms}, {"api_key", key_hint()}});
  } else {
    KLYNAA_LOG(debug, "django", "request",
               {{"method", method}, {"path", path}, {"status", r.status}, {"duration_ms", ms}});
  }
  return r;
}

api_result<django_client::json_answer> django_client::call_json(
    std::string_view method, const std::string& path, const std::optional<json>& body,
    const std::vector<http_header>& extra) {
  using result = api_result<json_answer>;
  http_response r = request(method, path, body, extra);
  json_answer a;
  a.status = r.status;
  a.what = what_of(method, path);
  job_result c = classify(r, a.what);
  if (c.kind != outcome::ok) return result::fail(std::move(c));
  if (!r.body.empty()) {
    a.body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (a.body.is_discarded()) return a.bad<json_answer>("not JSON");
  }
  return result::ok(std::move(a));
}

api_result<pickup_info> django_client::get_pickup(int64_t id) {
  using result = api_result<pickup_info>;
  auto a = call_json("GET", "/api/serverless/pickups/" + std::to_string(id) + "/");
  if (!a) {
    if (a.error.http_status == 404)
      a.error.message = "Pickup " + std::to_string(id) + " does not exist in Django (" +
                        a.error.message + ")";
    return result::fail(std::move(a.error));
  }
  const json& o = a->body;
  if (!o.is_object()) return a->bad<pickup_info>("expected an object");
  pickup_info p;
  auto customer = get_int(o, "customer_id");
  if (!customer) return a->bad<pickup_info>("customer_id is missing or not an integer");
  p.customer_id = *customer;
  p.id = get_int(o, "id").value_or(id);
  p.status = get_string(o, "status").value_or("");
  auto worker = o.find("worker_id");
  if (worker != o.end() && !worker->is_null()) {
    if (!worker->is_number_integer())
      return a->bad<pickup_info>("worker_id is neither an integer nor null");
    p.worker_id = worker->get<int64_t>();
  }
  json price = get_or_null(o, "price");
  p.price = price.is_number() ? price : json();
  p.currency = get_string(o, "currency").value_or("");
  p.raw = o;
  return result::ok(std::move(p));
}

api_result<std::vector<push_token>> django_client::get_tokens(int64_t user_id) {
  using T = std::vector<push_token>;
  auto a = call_json("GET", "/api/users/" + std::to_string(user_id) + "/tokens/");
  if (!a) return api_result<T>::fail(std::move(a.error));
  const json& o = a->body;
  if (!o.is_object()) return a->bad<T>("expected an object");
  auto tokens = o.find("tokens");
  if (tokens == o.end() || !tokens->is_array()) return a->bad<T>("tokens is missing or not a list");
  T out;
  for (const auto& t : *tokens) {
    if (!t.is_object()) return a->bad<T>("a token entry is not an object");
    auto token = get_string(t, "token");
    if (!token || token->empty()) return a->bad<T>("a token entry has no token string");
    out.push_back({*token, get_string(t, "platform").value_or("")});
  }
  return api_result<T>::ok(std::move(out));
}

job_result django_client::delete_token(int64_t user_id, const std::string& token) {
  std::string path =
      "/api/users/" + std::to_string(user_id) + "/tokens/" + http_session::escape(token) + "/";
  http_response r = request("DELETE", path);
  if (r.status == 404) {
    job_result ok = job_result::success(json::object());
    ok.http_status = 404;
    return ok;
  }
  // Push tokens are credentials of a device: name the call without the token.
  return classify(r, "DELETE /api/users/" + std::to_string(user_id) + "/tokens/{token}/");
}

api_result<std::vector<admin_user>> django_client::get_admins() {
  using T = std::vector<admin_user>;
  auto a = call_json("GET", "/api/users/admins/");
  if (!a) return api_result<T>::fail(std::move(a.error));
  const json& o = a->body;
  if (!o.is_object()) return a->bad<T>("expected an object");
  auto admins = o.find("admins");
  if (admins == o.end() || !admins->is_array()) return a->bad<T>("admins is missing or not a list");
  T out;
  for (const auto& e : *admins) {
    if (!e.is_object()) return a->bad<T>("an admin entry is not an object");
    auto id = get_int(e, "id");
    if (!id) return a->bad<T>("an admin entry has no integer id");
    out.push_back({*id, get_string(e, "email").value_or("")});
  }
  return api_result<T>::ok(std::move(out));
}

api_result<escrow_release> django_client::release_escrow(int64_t pickup_id,
                                                         const std::string& reason) {
  using result = api_result<escrow_release>;
  std::string path = "/api/serverless/escrow/" + std::to_string(pickup_id) + "/release/";
  std::string what = what_of("POST", path);
  http_response r = request("POST", path, json{{"reason", reason}},
                            {{"Idempotency-Key", "escrow-release-" + std::to_string(pickup_id)}});
  json body = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  std::string status = body.is_object() ? get_string(body, "status").value_or("") : std::string();

  if (r.status == 409) {
    if (status == "already_released") {
      escrow_release e;
      e.already_released = true;
      e.amount = get_or_null(body, "amount");
      e.currency = get_or_null(body, "currency");
      return result::ok(std::move(e));
    }
    if (status == "disputed") {
      return result::fail(job_result::failure(
          outcome::permanent, "disputed",
          "Django refused to release the escrow of pickup " + std::to_string(pickup_id) +
              " because the pickup is disputed; an admin must resolve the dispute.",
          409));
    }
    return result::fail(classify(r, what));  // an undocumented 409: permanent http_409
  }
  job_result c = classify(r, what);
  if (c.kind != outcome::ok) {
    if (r.status == 404)
      c.message = "Pickup " + std::to_string(pickup_id) + " has no escrow in Django (" +
                  c.message + ")";
    return result::fail(std::move(c));
  }
  if (status != "released") {
    return result::fail(bad_response(
        r.status, service, what, body.is_discarded() ? "not JSON" : "status is not \"released\""));
  }
  escrow_release e;
  e.amount = get_or_null(body, "amount");
  e.currency = get_or_null(body, "currency");
  return result::ok(std::move(e));
}

api_result<json> django_client::get_available_workers() {
  auto a = call_json("GET", "/api/workers/available/");
  if (!a) return api_result<json>::fail(std::move(a.error));
  const json& o = a->body;
  if (!o.is_object() || !o.contains("workers") || !o["workers"].is_array())
    return a->bad<json>("workers is missing or not a list");
  return api_result<json>::ok(o["workers"]);
}

api_result<analytics_page> django_client::get_analytics_pickups(
    const std::string& from, const std::string& to, const std::optional<std::string>& cursor) {
  using result = api_result<analytics_page>;
  std::string path = "/api/analytics/pickups/?from=" + http_session::escape(from) +
                     "&to=" + http_session::escape(to);
  if (cursor) path += "&cursor=" + http_session::escape(*cursor);
  auto a = call_json("GET", path);
  if (!a) return result::fail(std::move(a.error));
  const json& o = a->body;
  if (!o.is_object()) return a->bad<analytics_page>("expected an object");
  auto pickups = o.find("pickups");
  if (pickups == o.end() || !pickups->is_array())
    return a->bad<analytics_page>("pickups is missing or not a list");
  analytics_page page;
  page.pickups = *pickups;
  json next = get_or_null(o, "next");
  if (next.is_string()) {
    page.next = next.get<std::string>();
  } else if (next.is_number_integer()) {
    page.next = next.dump();
  } else if (!next.is_null()) {
    return a->bad<analytics_page>("next is neither a cursor nor null");
  }
  return result::ok(std::move(page));
}

api_result<json> django_client::post_report(const json& report) {
  auto a = call_json("POST", "/api/reports/", report);
  if (!a) return api_result<json>::fail(std::move(a.error));
  const json& o = a->body;
  if (!o.is_object() || !o.contains("id") || o["id"].is_null()) return a->bad<json>("id is missing");
  return api_result<json>::ok(o["id"]);
}

api_result<int64_t> django_client::cleanup(int64_t older_than_days) {
  auto a = call_json("POST", "/api/cleanup/", json{{"older_than_days", older_than_days}});
  if (!a) return api_result<int64_t>::fail(std::move(a.error));
  auto deleted = a->body.is_object() ? get_int(a->body, "deleted") : std::nullopt;
  if (!deleted) return a->bad<int64_t>("deleted is missing or not an integer");
  return api_result<int64_t>::ok(*deleted);
}

}  // namespace klynaa::actors
