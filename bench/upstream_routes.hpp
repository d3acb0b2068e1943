// What klynaa-upstream answers (bench/fake_upstream.cpp): the routes of the
// Django API (docs/events-and-functions.md, "The Django API") and of the push
// providers, each answer a deterministic function of the ids in the path, and
// the class each request is counted under.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/upstream_options.hpp"

namespace klynaa::upstream {

using json = nlohmann::json;

constexpr size_t max_header_bytes = 64 * 1024;          // request line and headers
constexpr size_t max_body_bytes = 1024 * 1024;          // one request body

enum class route_class : uint8_t {
  pickup, tokens, token_delete, admins, workers, escrow, analytics, reports, cleanup,
  webhook, fcm_send, oauth_token, sns_publish, not_found, malformed, count_
};
constexpr std::array<const char*, static_cast<size_t>(route_class::count_)> class_names = {
    "pickup", "tokens", "token_delete", "admins", "workers_available", "escrow_release",
    "analytics_pickups", "reports", "cleanup", "webhook", "fcm_send", "oauth_token",
    "sns_publish", "not_found", "malformed"};

struct request {
  std::string method;
  std::string target;  ///< origin-form: path and query
  std::string authorization;
  std::string body;
  bool too_large = false;  ///< the body was over 1 MiB (and dropped)
};

struct response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  ///< extra ones, e.g. Retry-After
};

/// The path of an origin-form target (the query left out).
inline std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }

/// `j` as text, invalid UTF-8 replaced.
inline std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

/// An answer with `status` and a JSON `body`.
response answer(int status, std::string body);

/// {"error": code, "message": message} with `status`.
response error_answer(int status, std::string_view code, const std::string& message);

struct routed {
  route_class cls = route_class::not_found;
  response resp;
};

/// What a request gets, and the class it is counted under.
/// `sequence` numbers the answers that carry a fresh id (reports, FCM, SNS).
routed route(const request& req, const options& o, uint64_t& sequence);

/// The reason phrase of an HTTP status ("Unknown" for one we never send).
const char* reason_phrase(int status);

}  // namespace klynaa::upstream
