// What klynaa-upstream answers (upstream_routes.hpp).
#include "bench/upstream_routes.hpp"

#include <algorithm>
#include <cstdio>
#include <optional>

namespace klynaa::upstream {

namespace {

/// Django's <int:...>: digits only (at most 18, so the value fits).
bool parse_id(std::string_view s, int64_t& id) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + (ch - '0');
  }
  id = v;
  return true;
}

std::string pickup_json(int64_t id) {
  // Plausible and deterministic: the same id always gives the same pickup.
  char buf[512];
  int n = std::snprintf(
      buf, sizeof buf,
      "{\"id\":%lld,\"status\":\"accepted\",\"customer_id\":%lld,\"worker_id\":%lld,"
      "\"lat\":%.4f,\"lng\":%.4f,\"price\":1500.0,\"currency\":\"NGN\","
      "\"created_at\":\"2026-11-27T10:00:00Z\",\"accepted_at\":\"2026-11-27T10:05:00Z\","
      "\"delivered_at\":null}",
      static_cast<long long>(id), static_cast<long long>(100000 + id % 900000),
      static_cast<long long>(1000000 + id % 900000), 6.45 + static_cast<double>(id % 1000) * 1e-4,
      3.39 + static_cast<double>(id % 997) * 1e-4);
  return std::string(buf, static_cast<size_t>(std::max(n, 0)));
}

std::string tokens_json(int64_t user, int64_t count) {
  std::string s = "{\"user_id\":" + std::to_string(user) + ",\"tokens\":[";
  for (int64_t k = 1; k <= count; ++k) {
    if (k > 1) s += ',';
    s += "{\"token\":\"fake-token-" + std::to_string(user) + "-" + std::to_string(k) +
         "\",\"platform\":\"" + (k % 2 ? "android" : "ios") + "\"}";
  }
  return s + "]}";
}

/// The path's segments; a trailing "/" gives a last "".
std::vector<std::string_view> segments_of(std::string_view path) {
  std::vector<std::string_view> seg;
  for (size_t p = 1; p <= path.size();) {
    size_t slash = path.find('/', p);
    if (slash == std::string_view::npos) slash = path.size();
    seg.push_back(path.substr(p, slash - p));
    p = slash + 1;
  }
  return seg;
}

/// A path's route: its class, the id in it, and the one method it takes.
struct match {
  route_class cls = route_class::not_found;
  int64_t id = 0;
  const char* allow = "POST";
};

match match_path(const std::vector<std::string_view>& seg) {
  const size_t n = seg.size();
  auto is = [&](size_t i, std::string_view s) { return i < n && seg[i] == s; };
  match r;
  int64_t& id = r.id;
  const char*& allow = r.allow;
  if (n == 5 && is(0, "api") && is(1, "serverless") && is(2, "pickups") && parse_id(seg[3], id) &&
      seg[4].empty()) {
    r.cls = route_class::pickup;
    allow = "GET";
  } else if (n == 4 && is(0, "api") && is(1, "users") && is(2, "admins") && seg[3].empty()) {
    r.cls = route_class::admins;
    allow = "GET";
  } else if (n == 5 && is(0, "api") && is(1, "users") && parse_id(seg[2], id) && is(3, "tokens") &&
             seg[4].empty()) {
    r.cls = route_class::tokens;
    allow = "GET";
  } else if (n >= 6 && is(0, "api") && is(1, "users") && parse_id(seg[2], id) && is(3, "tokens") &&
             !seg[4].empty() && seg[n - 1].empty()) {
    r.cls = route_class::token_delete;  // <path:token>: may hold "/"
    allow = "DELETE";
  } else if (n == 4 && is(0, "api") && is(1, "workers") && is(2, "available") && seg[3].empty()) {
    r.cls = route_class::workers;
    allow = "GET";
  } else if (n == 6 && is(0, "api") && is(1, "serverless") && is(2, "escrow") &&
             parse_id(seg[3], id) && is(4, "release") && seg[5].empty()) {
    r.cls = route_class::escrow;
  } else if (n == 4 && is(0, "api") && is(1, "analytics") && is(2, "pickups") && seg[3].empty()) {
    r.cls = route_class::analytics;
    allow = "GET";
  } else if (n == 3 && is(0, "api") && is(1, "reports") && seg[2].empty()) {
    r.cls = route_class::reports;
  } else if (n == 3 && is(0, "api") && is(1, "cleanup") && seg[2].empty()) {
    r.cls = route_class::cleanup;
  } else if ((n == 1 || (n == 2 && seg[1].empty())) && (is(0, "push") || is(0, "webhook"))) {
    r.cls = route_class::webhook;
  } else if (n == 4 && is(0, "v1") && is(1, "projects") && !seg[2].empty() &&
             is(3, "messages:send")) {
    r.cls = route_class::fcm_send;
  } else if (n == 1 && is(0, "token")) {
    r.cls = route_class::oauth_token;
  } else if (n == 1 && seg[0].empty()) {
    r.cls = route_class::sns_publish;
  }
  return r;
}

/// 401 (a wrong API key on /api/), 404 or 405 (with Allow) when the request
/// cannot reach its route; nullopt when it can.
std::optional<response> refusal(const request& req, const options& o, std::string_view path,
                                const match& m) {
  const bool api = path.rfind("/api/", 0) == 0;
  if (api && !o.api_key.empty() && req.authorization != "Api-Key " + o.api_key)
    return error_answer(401, "unauthorized", "Send the header 'Authorization: Api-Key <DJANGO_API_KEY>'.");
  if (m.cls == route_class::not_found)
    return error_answer(404, "not_found", "No route " + req.method + " " + std::string(path) + ".");
  std::string_view method = req.method;
  if (method == "HEAD") method = "GET";
  if (method != m.allow) {
    response r = error_answer(405, "method_not_allowed",
                              "Use " + std::string(m.allow) + " for " + std::string(path) + ".");
    r.headers.push_back({"Allow", m.allow});
    return r;
  }
  return std::nullopt;
}

/// POST /api/serverless/escrow/{id}/release/: 400 without a "reason" string.
response escrow_answer(const request& req, int64_t id) {
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object() || !body.contains("reason") || !body["reason"].is_string())
    return answer(400, json_text({{"error", "invalid_field"},
                                  {"message", "reason is required (a string)."},
                                  {"field", "reason"}}));
  if (id == 0) return error_answer(404, "not_found", "Pickup 0 does not exist.");
  return answer(200, "{\"pickup_id\":" + std::to_string(id) +
                         ",\"status\":\"released\",\"amount\":1500.0,\"currency\":\"NGN\"}");
}

/// SNS Publish: PublishResponse XML with message id `n`.
response sns_publish_answer(uint64_t n) {
  char buf[512];
  int len = std::snprintf(
      buf, sizeof buf,
      "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n"
      "  <PublishResult>\n    <MessageId>00000000-0000-4000-8000-%012llu</MessageId>\n"
      "  </PublishResult>\n  <ResponseMetadata>\n"
      "    <RequestId>00000000-0000-4000-8000-000000000000</RequestId>\n"
      "  </ResponseMetadata>\n</PublishResponse>\n",
      static_cast<unsigned long long>(n % 1000000000000ULL));
  response r = answer(200, std::string(buf, static_cast<size_t>(std::max(len, 0))));
  r.content_type = "text/xml";
  return r;
}

/// The answer of a route the request reached.
response route_answer(const request& req, const options& o, const match& m,
                      const std::vector<std::string_view>& seg, uint64_t& sequence) {
  const int64_t id = m.id;
  switch (m.cls) {
    case route_class::pickup:
      return id == 0 ? error_answer(404, "not_found", "Pickup 0 does not exist.") : answer(200, pickup_json(id));
    case route_class::tokens:
      return answer(200, tokens_json(id, o.tokens_per_user));
    case route_class::token_delete:
      return answer(204, "");
    case route_class::admins:
      return answer(200,
                    "{\"admins\":[{\"id\":1,\"email\":\"admin1@klynaa.example\"},"
                    "{\"id\":2,\"email\":\"admin2@klynaa.example\"}]}");
    case route_class::workers:
      return answer(200,
                    "{\"workers\":[{\"id\":1,\"lat\":6.5244,\"lng\":3.3792,\"service_radius_km\":5.0},"
                    "{\"id\":2,\"lat\":6.4654,\"lng\":3.4064,\"service_radius_km\":5.0},"
                    "{\"id\":3,\"lat\":6.6018,\"lng\":3.3515,\"service_radius_km\":10.0}]}");
    case route_class::escrow:
      return escrow_answer(req, id);
    case route_class::analytics:
      return answer(200, "{\"pickups\":[" + pickup_json(1) + "," + pickup_json(2) + "," +
                             pickup_json(3) + "],\"next\":null}");
    case route_class::reports:
      return answer(201, "{\"id\":" + std::to_string(++sequence) + "}");
    case route_class::cleanup:
      return answer(200, "{\"deleted\":0}");
    case route_class::webhook:
      return answer(200, "{\"ok\":true}");
    case route_class::fcm_send:
      return answer(200, json_text({{"name", "projects/" + std::string(seg[2]) + "/messages/" +
                                                 std::to_string(++sequence)}}));
    case route_class::oauth_token:
      return answer(200,
                    "{\"access_token\":\"fake-access-token\",\"expires_in\":3600,"
                    "\"token_type\":\"Bearer\"}");
    case route_class::sns_publish:
      return sns_publish_answer(++sequence);
    case route_class::not_found:
    case route_class::malformed:
    case route_class::count_:
      break;
  }
  return response{};
}

}  // namespace

response answer(int status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

response error_answer(int status, std::string_view code, const std::string& message) {
  return answer(status, json_text({{"error", code}, {"message", message}}));
}

routed route(const request& req, const options& o, uint64_t& sequence) {
  const std::string_view path = path_of(req.target);
  const auto seg = segments_of(path);
  const match m = match_path(seg);
  routed r;
  r.cls = m.cls;
  if (auto refused = refusal(req, o, path, m)) {
    r.resp = std::move(*refused);
    return r;
  }
  r.resp = route_answer(req, o, m, seg, sequence);
  return r;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

}  // namespace klynaa::upstream
