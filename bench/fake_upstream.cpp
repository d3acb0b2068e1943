// klynaa-upstream: a fast fake of the HTTP upstreams a node calls (the Django
// API of docs/events-and-functions.md, and the push providers), for benchmarks
// of the node's HTTP clients. See docs/performance.md, "The fake upstream
// (klynaa-upstream)".
//
//   klynaa-upstream [--bind 127.0.0.1] [--port 0] [--latency-ms 0]
//                   [--latency-step-ms N --step-after-s T] [--capacity 0]
//                   [--retry-after-s 1] [--tokens-per-user 1] [--api-key K]
//                   [--h2-max-streams 1000]
//
// One thread and one epoll loop, never a thread per connection. Each connection
// speaks HTTP/1.1 (keep-alive, pipelining, Expect: 100-continue, chunked bodies)
// or cleartext HTTP/2 with prior knowledge (libnghttp2's server session), chosen
// by its first bytes: the 24-byte HTTP/2 client preface, or anything else.
//
// Every answer is held for the current latency (--latency-ms; after
// --step-after-s seconds, --latency-step-ms) on a timer: a min-heap of due times
// in the loop, woken by one timerfd. No thread ever sleeps. A request is "in
// flight" from its last byte read to its answer; above --capacity in flight (0:
// no limit) a request is refused at once with 503 and Retry-After.
//
// GET /_stats answers the counters as JSON at once (never delayed, refused or
// counted). SIGTERM and SIGINT print the same JSON, with "final": true, as the
// last stdout line and exit 0. The first stdout line is {"listening": "HOST:PORT"}.
//
// Routes (the answers are deterministic functions of the ids in the path):
//   GET    /api/serverless/pickups/{id}/               pickup JSON (404 for id 0)
//   GET    /api/users/{id}/tokens/                     --tokens-per-user tokens
//   DELETE /api/users/{id}/tokens/{token}/             204
//   GET    /api/users/admins/                          two admins
//   GET    /api/workers/available/                     three workers
//   POST   /api/serverless/escrow/{id}/release/        {"status": "released", ...}
//                                                      (400 without a "reason" string)
//   GET    /api/analytics/pickups/                     three pickups, "next": null
//   POST   /api/reports/                               201 {"id": n}
//   POST   /api/cleanup/                               {"deleted": 0}
//   POST   /push, /webhook                             200 (the webhook provider)
//   POST   /v1/projects/{p}/messages:send              FCM: {"name": ...}
//   POST   /token                                      OAuth2: {"access_token", ...}
//   POST   /                                           SNS Publish: PublishResponse XML
// anything else 404, a wrong method 405 (with Allow). With --api-key K, /api/
// routes without `Authorization: Api-Key K` get 401, as the reference app does.
// A malformed HTTP/1.1 request gets 400 (413 for a body over 1 MiB, 431 for a
// header section over 64 KiB) and the connection is closed after it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nghttp2/nghttp2.h>
#include <nlohmann/json.hpp>

#include "bench/histogram.hpp"

namespace {

using json = nlohmann::json;
using klynaa::bench::histogram;

constexpr size_t max_header_bytes = 64 * 1024;          // request line and headers
constexpr size_t max_body_bytes = 1024 * 1024;          // one request body
constexpr size_t max_buffered_bytes = 4 * 1024 * 1024;  // unread input behind a pending answer
constexpr size_t max_out_bytes = 1024 * 1024;           // HTTP/2: serialise no further above this
constexpr std::string_view h2_preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr int fd_bits = 24;  // epoll data: fd in the low 24 bits, the connection's generation above

int64_t mono_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

double round3(double v) { return std::round(v * 1000.0) / 1000.0; }
double ns_to_ms(uint64_t ns) { return round3(static_cast<double>(ns) / 1e6); }

// ---------------------------------------------------------------- options

struct options {
  std::string bind = "127.0.0.1";
  int port = 0;
  int64_t latency_ms = 0;
  std::optional<int64_t> step_latency_ms;  ///< --latency-step-ms
  double step_after_s = 0;                 ///< --step-after-s
  int64_t capacity = 0;                    ///< 0: unlimited
  int64_t retry_after_s = 1;
  int64_t tokens_per_user = 1;
  std::string api_key;  ///< "": any key, or none, is accepted
  int64_t h2_max_streams = 1000;
};

constexpr const char* help_text = R"(klynaa-upstream: a fake Django API and push upstream for benchmarks
(HTTP/1.1 and cleartext HTTP/2 with prior knowledge, one epoll thread).

  --bind ADDR              IPv4 address to listen on (default 127.0.0.1)
  --port N                 port; 0 picks a free one (default 0)
  --latency-ms N           hold every answer N ms (default 0)
  --latency-step-ms N      ... and N ms once --step-after-s seconds have passed
  --step-after-s T         (both or neither)
  --capacity N             at most N requests in flight; above, 503 at once (0: no limit)
  --retry-after-s S        the Retry-After of those 503s (default 1)
  --tokens-per-user N      push tokens GET /api/users/{id}/tokens/ lists (default 1)
  --api-key K              require `Authorization: Api-Key K` on /api/ (default: none needed)
  --h2-max-streams N       SETTINGS_MAX_CONCURRENT_STREAMS of HTTP/2 connections (default 1000)

The first stdout line is {"listening": "ADDR:PORT"}. GET /_stats answers the
counters as JSON; SIGTERM or SIGINT prints them as a final JSON line and exits 0.
)";

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "klynaa-upstream: %s (see --help)\n", msg.c_str());
  std::exit(2);
}

bool parse_int(const std::string& s, int64_t lo, int64_t hi, int64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  for (char ch : s)
    if (ch < '0' || ch > '9') return false;
  int64_t v = std::strtoll(s.c_str(), nullptr, 10);
  if (v < lo || v > hi) return false;
  out = v;
  return true;
}

options parse_args(int argc, char** argv) {
  options o;
  bool have_step_ms = false, have_step_after = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::optional<std::string> inline_value;
    if (flag == "--help" || flag == "-h") {
      std::fputs(help_text, stdout);
      std::exit(0);
    }
    if (auto eq = flag.find('='); flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = flag.substr(eq + 1);
      flag.resize(eq);
    }
    auto value = [&]() -> std::string {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) usage_error(flag + " needs a value");
      return argv[++i];
    };
    auto integer = [&](int64_t lo, int64_t hi) {
      std::string s = value();
      int64_t v = 0;
      if (!parse_int(s, lo, hi, v))
        usage_error(flag + ": expected an integer from " + std::to_string(lo) + " to " +
                    std::to_string(hi) + ", got \"" + s + "\"");
      return v;
    };
    if (flag == "--bind") {
      o.bind = value();
      in_addr a{};
      if (::inet_pton(AF_INET, o.bind.c_str(), &a) != 1)
        usage_error("--bind: expected an IPv4 address, got \"" + o.bind + "\"");
    } else if (flag == "--port") {
      o.port = static_cast<int>(integer(0, 65535));
    } else if (flag == "--latency-ms") {
      o.latency_ms = integer(0, 3600 * 1000);
    } else if (flag == "--latency-step-ms") {
      o.step_latency_ms = integer(0, 3600 * 1000);
      have_step_ms = true;
    } else if (flag == "--step-after-s") {
      std::string s = value();
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      if (s.empty() || *end != '\0' || !(v >= 0 && v <= 86400 * 365))
        usage_error("--step-after-s: expected seconds (>= 0), got \"" + s + "\"");
      o.step_after_s = v;
      have_step_after = true;
    } else if (flag == "--capacity") {
      o.capacity = integer(0, 100000000);
    } else if (flag == "--retry-after-s") {
      o.retry_after_s = integer(0, 86400);
    } else if (flag == "--tokens-per-user") {
      o.tokens_per_user = integer(0, 1000);
    } else if (flag == "--api-key") {
      o.api_key = value();
    } else if (flag == "--h2-max-streams") {
      o.h2_max_streams = integer(1, 1000000);
    } else {
      usage_error("unknown option " + flag);
    }
  }
  if (have_step_ms != have_step_after)
    usage_error("--latency-step-ms and --step-after-s go together");
  return o;
}

// ---------------------------------------------------------------- routes

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

std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }

std::string json_text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

response answer(int status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

response error_answer(int status, std::string_view code, const std::string& message) {
  return answer(status, json_text({{"error", code}, {"message", message}}));
}

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

struct routed {
  route_class cls = route_class::not_found;
  response resp;
};

/// What a request gets, and the class it is counted under.
routed route(const request& req, const options& o, uint64_t& sequence) {
  const std::string_view path = path_of(req.target);
  std::vector<std::string_view> seg;  // the path's segments; a trailing "/" gives a last ""
  for (size_t p = 1; p <= path.size();) {
    size_t slash = path.find('/', p);
    if (slash == std::string_view::npos) slash = path.size();
    seg.push_back(path.substr(p, slash - p));
    p = slash + 1;
  }
  const size_t n = seg.size();
  auto is = [&](size_t i, std::string_view s) { return i < n && seg[i] == s; };
  int64_t id = 0;

  routed r;
  const char* allow = "POST";
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

  const bool api = path.rfind("/api/", 0) == 0;
  if (api && !o.api_key.empty() && req.authorization != "Api-Key " + o.api_key) {
    r.resp = error_answer(401, "unauthorized",
                          "Send the header 'Authorization: Api-Key <DJANGO_API_KEY>'.");
    return r;
  }
  if (r.cls == route_class::not_found) {
    r.resp = error_answer(404, "not_found", "No route " + req.method + " " + std::string(path) + ".");
    return r;
  }
  std::string_view method = req.method;
  if (method == "HEAD") method = "GET";
  if (method != allow) {
    r.resp = error_answer(405, "method_not_allowed",
                          "Use " + std::string(allow) + " for " + std::string(path) + ".");
    r.resp.headers.push_back({"Allow", allow});
    return r;
  }

  switch (r.cls) {
    case route_class::pickup:
      r.resp = id == 0 ? error_answer(404, "not_found", "Pickup 0 does not exist.")
                       : answer(200, pickup_json(id));
      break;
    case route_class::tokens:
      r.resp = answer(200, tokens_json(id, o.tokens_per_user));
      break;
    case route_class::token_delete:
      r.resp = answer(204, "");
      break;
    case route_class::admins:
      r.resp = answer(200,
                      "{\"admins\":[{\"id\":1,\"email\":\"admin1@klynaa.example\"},"
                      "{\"id\":2,\"email\":\"admin2@klynaa.example\"}]}");
      break;
    case route_class::workers:
      r.resp = answer(200,
                      "{\"workers\":[{\"id\":1,\"lat\":6.5244,\"lng\":3.3792,\"service_radius_km\":5.0},"
                      "{\"id\":2,\"lat\":6.4654,\"lng\":3.4064,\"service_radius_km\":5.0},"
                      "{\"id\":3,\"lat\":6.6018,\"lng\":3.3515,\"service_radius_km\":10.0}]}");
      break;
    case route_class::escrow: {
      json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
      if (!body.is_object() || !body.contains("reason") || !body["reason"].is_string()) {
        r.resp = answer(400, json_text({{"error", "invalid_field"},
                                        {"message", "reason is required (a string)."},
                                        {"field", "reason"}}));
      } else if (id == 0) {
        r.resp = error_answer(404, "not_found", "Pickup 0 does not exist.");
      } else {
        r.resp = answer(200, "{\"pickup_id\":" + std::to_string(id) +
                                 ",\"status\":\"released\",\"amount\":1500.0,\"currency\":\"NGN\"}");
      }
      break;
    }
    case route_class::analytics:
      r.resp = answer(200, "{\"pickups\":[" + pickup_json(1) + "," + pickup_json(2) + "," +
                               pickup_json(3) + "],\"next\":null}");
      break;
    case route_class::reports:
      r.resp = answer(201, "{\"id\":" + std::to_string(++sequence) + "}");
      break;
    case route_class::cleanup:
      r.resp = answer(200, "{\"deleted\":0}");
      break;
    case route_class::webhook:
      r.resp = answer(200, "{\"ok\":true}");
      break;
    case route_class::fcm_send:
      r.resp = answer(200, json_text({{"name", "projects/" + std::string(seg[2]) + "/messages/" +
                                                   std::to_string(++sequence)}}));
      break;
    case route_class::oauth_token:
      r.resp = answer(200,
                      "{\"access_token\":\"fake-access-token\",\"expires_in\":3600,"
                      "\"token_type\":\"Bearer\"}");
      break;
    case route_class::sns_publish: {
      char buf[512];
      int len = std::snprintf(
          buf, sizeof buf,
          "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n"
          "  <PublishResult>\n    <MessageId>00000000-0000-4000-8000-%012llu</MessageId>\n"
          "  </PublishResult>\n  <ResponseMetadata>\n"
          "    <RequestId>00000000-0000-4000-8000-000000000000</RequestId>\n"
          "  </ResponseMetadata>\n</PublishResponse>\n",
          static_cast<unsigned long long>(++sequence % 1000000000000ULL));
      r.resp = answer(200, std::string(buf, static_cast<size_t>(std::max(len, 0))));
      r.resp.content_type = "text/xml";
      break;
    }
    case route_class::not_found:
    case route_class::malformed:
    case route_class::count_:
      break;
  }
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

// ---------------------------------------------------------------- HTTP/1.1 parser

bool is_tchar(unsigned char ch) {
  return std::isalnum(ch) || (ch != 0 && std::strchr("!#$%&'*+-.^_`|~", ch) != nullptr);
}

char lower(char ch) { return (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

/// Whether the comma-separated list `v` holds `token` (case-insensitive).
bool has_token(std::string_view v, std::string_view token) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    if (iequals(trim(v.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return false;
}

struct h1_parse {
  enum class state { need_more, complete, error } st = state::need_more;
  int status = 0;  ///< error: 400, 413, 431, 501 or 505
  std::string why;
  request req;
  size_t consumed = 0;
  bool keep_alive = true;
  bool head = false;
  bool expect_continue = false;  ///< need_more with the headers read: the client may wait for 100
};

h1_parse fail(int status, std::string why) {
  h1_parse r;
  r.st = h1_parse::state::error;
  r.status = status;
  r.why = std::move(why);
  return r;
}

/// Decodes a chunked body starting at `p`: 1 done (body, end set), 0 need more,
/// -1 malformed (status set).
int decode_chunked(std::string_view buf, size_t p, std::string& body, size_t& end, int& status) {
  body.clear();
  status = 400;
  for (;;) {
    size_t nl = buf.find('\n', p);
    if (nl == std::string_view::npos) return buf.size() - p > 1024 ? -1 : 0;
    std::string_view line = buf.substr(p, nl - p);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    uint64_t size = 0;
    size_t i = 0;
    for (; i < line.size() && std::isxdigit(static_cast<unsigned char>(line[i])); ++i) {
      if (i >= 8) return -1;
      char ch = lower(line[i]);
      size = size * 16 + static_cast<uint64_t>(ch <= '9' ? ch - '0' : ch - 'a' + 10);
    }
    std::string_view rest = trim(line.substr(i));
    if (i == 0 || (!rest.empty() && rest.front() != ';')) return -1;
    p = nl + 1;
    if (size == 0) {  // the last chunk; then trailers up to an empty line
      for (;;) {
        size_t nl2 = buf.find('\n', p);
        if (nl2 == std::string_view::npos) {
          if (buf.size() - p <= max_header_bytes) return 0;
          status = 431;
          return -1;
        }
        std::string_view t = buf.substr(p, nl2 - p);
        p = nl2 + 1;
        if (t.empty() || t == "\r") {
          end = p;
          return 1;
        }
      }
    }
    if (body.size() + size > max_body_bytes) {
      status = 413;
      return -1;
    }
    if (buf.size() < p + size + 1) return 0;
    body.append(buf.substr(p, size));
    p += size;
    if (buf[p] == '\r') {
      if (buf.size() < p + 2) return 0;
      if (buf[p + 1] != '\n') return -1;
      p += 2;
    } else if (buf[p] == '\n') {
      p += 1;
    } else {
      return -1;
    }
  }
}

/// Parses one request from the front of `buf` (leading empty lines already gone).
h1_parse parse_h1(std::string_view buf) {
  h1_parse r;
  size_t nl = buf.find('\n');
  if (nl == std::string_view::npos) {
    if (buf.size() > max_header_bytes) return fail(431, "request line too long");
    // Refuse now what can never become a request line, rather than wait for a
    // newline that binary garbage may never send: a method of tchars, a space,
    // then visible characters and spaces (a CR only at the end).
    size_t i = 0;
    while (i < buf.size() && is_tchar(static_cast<unsigned char>(buf[i]))) ++i;
    if (i < buf.size() && buf[i] != ' ') return fail(400, "malformed request line");
    for (; i < buf.size(); ++i) {
      auto ch = static_cast<unsigned char>(buf[i]);
      if ((ch < 0x20 && !(ch == '\r' && i + 1 == buf.size())) || ch == 0x7f)
        return fail(400, "malformed request line");
    }
    return r;
  }
  std::string_view line = buf.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

  // request-line = method SP request-target SP HTTP-version
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return fail(400, "malformed request line");
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (method.empty()) return fail(400, "empty method");
  for (char ch : method)
    if (!is_tchar(static_cast<unsigned char>(ch))) return fail(400, "malformed method");
  if (target.empty()) return fail(400, "empty request target");
  for (char ch : target)
    if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f) return fail(400, "malformed request target");
  bool http11;
  if (version == "HTTP/1.1") {
    http11 = true;
  } else if (version == "HTTP/1.0") {
    http11 = false;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && std::isdigit(static_cast<unsigned char>(version[5])) &&
             version[6] == '.' && std::isdigit(static_cast<unsigned char>(version[7]))) {
    return fail(505, "HTTP version not supported");
  } else {
    return fail(400, "malformed HTTP version");
  }
  if (target.front() != '/') {
    // absolute-form (a proxy's request): keep the path; asterisk-form for OPTIONS.
    size_t scheme = target.find("://");
    if (scheme != std::string_view::npos && scheme > 0) {
      size_t slash = target.find('/', scheme + 3);
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    } else if (!(target == "*" && method == "OPTIONS")) {
      return fail(400, "malformed request target");
    }
  }

  std::optional<uint64_t> content_length;
  bool chunked = false, te = false, host = false, expect = false;
  std::string_view connection;
  size_t p = nl + 1;
  size_t header_end = 0;
  for (;;) {
    nl = buf.find('\n', p);
    if (nl == std::string_view::npos) {
      if (buf.size() > max_header_bytes) return fail(431, "header section too large");
      return r;  // need more
    }
    if (nl + 1 > max_header_bytes) return fail(431, "header section too large");
    std::string_view h = buf.substr(p, nl - p);
    p = nl + 1;
    if (!h.empty() && h.back() == '\r') h.remove_suffix(1);
    if (h.empty()) {
      header_end = p;
      break;
    }
    if (h.front() == ' ' || h.front() == '\t') return fail(400, "obsolete line folding");
    size_t colon = h.find(':');
    if (colon == std::string_view::npos || colon == 0) return fail(400, "malformed header line");
    std::string_view name = h.substr(0, colon);
    for (char ch : name)
      if (!is_tchar(static_cast<unsigned char>(ch))) return fail(400, "malformed header name");
    std::string_view value = trim(h.substr(colon + 1));
    for (char ch : value)
      if ((static_cast<unsigned char>(ch) < 0x20 && ch != '\t') || ch == 0x7f)
        return fail(400, "control character in a header value");
    if (iequals(name, "content-length")) {
      if (value.empty() || value.size() > 18) return fail(400, "malformed Content-Length");
      uint64_t v = 0;
      for (char ch : value) {
        if (ch < '0' || ch > '9') return fail(400, "malformed Content-Length");
        v = v * 10 + static_cast<uint64_t>(ch - '0');
      }
      if (content_length && *content_length != v) return fail(400, "conflicting Content-Length");
      content_length = v;
    } else if (iequals(name, "transfer-encoding")) {
      if (te) return fail(400, "repeated Transfer-Encoding");
      te = true;
      if (!iequals(value, "chunked")) return fail(501, "unsupported Transfer-Encoding");
      chunked = true;
    } else if (iequals(name, "host")) {
      if (host) return fail(400, "repeated Host");
      host = true;
    } else if (iequals(name, "connection")) {
      connection = value;
    } else if (iequals(name, "expect")) {
      expect = iequals(value, "100-continue");
    } else if (iequals(name, "authorization")) {
      r.req.authorization = std::string(value);
    }
  }
  if (te && content_length) return fail(400, "both Transfer-Encoding and Content-Length");
  if (te && !http11) return fail(400, "Transfer-Encoding in HTTP/1.0");

  r.req.method = std::string(method);
  r.req.target = std::string(target);
  r.head = method == "HEAD";
  r.keep_alive = http11 ? !has_token(connection, "close") : has_token(connection, "keep-alive");
  if (chunked) {
    int status = 400;
    size_t end = 0;
    int rc = decode_chunked(buf, header_end, r.req.body, end, status);
    if (rc < 0) return fail(status, "malformed chunked body");
    if (rc == 0) {
      r.expect_continue = expect && http11;
      return r;
    }
    r.consumed = end;
  } else if (content_length) {
    if (*content_length > max_body_bytes) return fail(413, "body over 1 MiB");
    if (buf.size() - header_end < *content_length) {
      r.expect_continue = expect && http11;
      return r;
    }
    r.req.body = std::string(buf.substr(header_end, *content_length));
    r.consumed = header_end + *content_length;
  } else {
    r.consumed = header_end;
  }
  r.st = h1_parse::state::complete;
  return r;
}

// ---------------------------------------------------------------- connections

/// An answer waiting for its due time.
struct pending_answer {
  route_class cls = route_class::not_found;
  response resp;
  int64_t done_ns = 0;  ///< when the request's last byte was read
  bool head = false;
};

struct h2_stream {
  request req;
  bool dispatched = false;
  std::optional<pending_answer> pending;
  std::string out_body;
  size_t out_off = 0;
};

enum class proto : uint8_t { unknown, h1, h2 };

struct conn {
  int fd = -1;
  uint64_t gen = 0;
  proto p = proto::unknown;
  std::string in, out;
  size_t out_off = 0;
  uint32_t events = 0;  ///< as registered with epoll
  bool dead = false;               ///< to be closed when settled
  bool read_closed = false;        ///< the peer sent FIN
  bool close_after_write = false;  ///< close once `out` is written
  bool dirty = false;              ///< in the server's settle list
  bool closing = false;            ///< being torn down: callbacks do nothing
  // HTTP/1.1: at most one request answered at a time, in order.
  std::optional<pending_answer> h1_pending;
  uint64_t h1_seq = 0;  ///< tags the timer of the pending answer
  bool h1_keep_alive = true;
  bool continue_sent = false;
  // HTTP/2
  nghttp2_session* session = nullptr;
  std::unordered_map<int32_t, std::unique_ptr<h2_stream>> streams;

  ~conn() {
    if (session) nghttp2_session_del(session);
  }
};

struct timer_entry {
  int64_t due = 0;
  int fd = -1;  ///< -1: resume accepting
  uint64_t gen = 0;
  int64_t tag = 0;  ///< HTTP/1.1: conn::h1_seq; HTTP/2: the stream id
  bool operator>(const timer_entry& o) const { return due > o.due; }
};

struct counters {
  std::array<std::map<int, uint64_t>, static_cast<size_t>(route_class::count_)> by_class;
  std::map<int, uint64_t> by_status;
  uint64_t total = 0, refused = 0, abandoned = 0, overflow_closed = 0;
  int64_t in_flight = 0, max_in_flight = 0;
  uint64_t accepted = 0, http1 = 0, http2 = 0, accept_errors = 0;
  uint64_t h2_streams = 0, h2_protocol_errors = 0;
  int64_t open = 0, max_open = 0;
  histogram latency;  ///< ns from the request's last byte read to its answer queued for the socket
};

class server;
server* the_server = nullptr;  // for the nghttp2 callbacks

class server {
 public:
  explicit server(options o) : o_(std::move(o)) {}

  void start();
  [[noreturn]] void run();

  // for the nghttp2 callbacks
  void dispatch(conn& c, int32_t stream_id, request&& req, bool head);
  void stream_closed(conn& c, int32_t stream_id);
  counters& stats() { return n_; }

 private:
  int64_t latency_ns(int64_t now) const;
  json stats_json() const;
  void arm_timer();
  void accept_all();
  void pause_accept();
  void resume_accept();
  void fire_timers();
  [[noreturn]] void on_signal();
  conn* lookup(int fd, uint64_t gen);
  void mark_dirty(conn& c);
  void settle_dirty();
  void settle(conn& c);
  void read_some(conn& c);
  void process(conn& c);
  void start_h2(conn& c);
  void h1_process(conn& c);
  void h1_error(conn& c, int status, const std::string& why);
  void finish(conn& c, int32_t stream_id, pending_answer& a);
  void send_response(conn& c, int32_t stream_id, response& r, bool head);
  void write_out(conn& c);
  void close_conn(conn& c);
  void set_events(conn& c, uint32_t events);

  options o_;
  counters n_;
  int ep_ = -1, listen_ = -1, timer_ = -1, signal_ = -1;
  int64_t start_ns_ = 0, armed_ns_ = 0;
  uint64_t next_gen_ = 0, sequence_ = 0;
  bool accept_paused_ = false;
  std::string listening_;
  std::vector<std::unique_ptr<conn>> conns_;  ///< by fd
  std::vector<std::pair<int, uint64_t>> dirty_;
  std::priority_queue<timer_entry, std::vector<timer_entry>, std::greater<timer_entry>> timers_;
  nghttp2_session_callbacks* h2_callbacks_ = nullptr;
  nghttp2_option* h2_option_ = nullptr;
};

// ---- nghttp2 callbacks (never close a connection: they flag it, settle() closes)

conn& conn_of(void* user_data) { return *static_cast<conn*>(user_data); }

h2_stream* stream_of(conn& c, int32_t id) {
  auto it = c.streams.find(id);
  return it == c.streams.end() ? nullptr : it->second.get();
}

int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  c.streams[frame->hd.stream_id] = std::make_unique<h2_stream>();
  return 0;
}

int on_header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
              const uint8_t* value, size_t valuelen, uint8_t, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing || frame->hd.type != NGHTTP2_HEADERS) return 0;
  h2_stream* s = stream_of(c, frame->hd.stream_id);
  if (!s) return 0;
  std::string_view n(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":method") s->req.method = std::string(v);
  else if (n == ":path") s->req.target = std::string(v);
  else if (n == "authorization") s->req.authorization = std::string(v);
  return 0;
}

int on_data_chunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                  void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing) return 0;
  h2_stream* s = stream_of(c, stream_id);
  if (!s || s->req.too_large) return 0;
  if (s->req.body.size() + len > max_body_bytes) {
    s->req.too_large = true;
    s->req.body.clear();
    s->req.body.shrink_to_fit();
    return 0;
  }
  s->req.body.append(reinterpret_cast<const char*>(data), len);
  return 0;
}

int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing) return 0;
  if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  h2_stream* s = stream_of(c, frame->hd.stream_id);
  if (!s || s->dispatched) return 0;
  s->dispatched = true;
  bool head = s->req.method == "HEAD";
  the_server->dispatch(c, frame->hd.stream_id, std::move(s->req), head);
  return 0;
}

int on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  conn& c = conn_of(user_data);
  if (!c.closing && frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
    ++the_server->stats().h2_protocol_errors;  // nghttp2 ends a session that broke the protocol
  return 0;
}

int on_stream_close(nghttp2_session*, int32_t stream_id, uint32_t, void* user_data) {
  conn& c = conn_of(user_data);
  if (c.closing) return 0;
  the_server->stream_closed(c, stream_id);
  return 0;
}

ssize_t read_body(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* data_flags,
                  nghttp2_data_source* source, void*) {
  auto* s = static_cast<h2_stream*>(source->ptr);
  size_t n = std::min(length, s->out_body.size() - s->out_off);
  std::memcpy(buf, s->out_body.data() + s->out_off, n);
  s->out_off += n;
  if (s->out_off == s->out_body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

// ---- server

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "klynaa-upstream: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

void server::start() {
  // The loop needs a descriptor per connection: the hard limit, not the soft 1024.
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) die("sigprocmask");
  ::signal(SIGPIPE, SIG_IGN);
  signal_ = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_ < 0) die("signalfd");

  listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_ < 0) die("socket");
  int one = 1;
  ::setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(o_.port));
  ::inet_pton(AF_INET, o_.bind.c_str(), &addr.sin_addr);
  if (::bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    die("bind " + o_.bind + ":" + std::to_string(o_.port));
  if (::listen(listen_, 65535) != 0) die("listen");
  socklen_t len = sizeof addr;
  ::getsockname(listen_, reinterpret_cast<sockaddr*>(&addr), &len);
  listening_ = o_.bind + ":" + std::to_string(ntohs(addr.sin_port));

  timer_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer_ < 0) die("timerfd_create");
  ep_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep_ < 0) die("epoll_create1");
  for (int fd : {listen_, timer_, signal_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = static_cast<uint64_t>(fd);  // generation 0: not a connection
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl");
  }

  nghttp2_session_callbacks_new(&h2_callbacks_);
  nghttp2_session_callbacks_set_on_begin_headers_callback(h2_callbacks_, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(h2_callbacks_, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h2_callbacks_, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(h2_callbacks_, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(h2_callbacks_, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(h2_callbacks_, on_frame_send);
  nghttp2_option_new(&h2_option_);
  nghttp2_option_set_no_closed_streams(h2_option_, 1);  // less memory per connection

  start_ns_ = mono_ns();
  std::printf("{\"listening\": \"%s\"}\n", listening_.c_str());  // an IPv4 address: nothing to escape
  std::fflush(stdout);
}

int64_t server::latency_ns(int64_t now) const {
  int64_t ms = o_.latency_ms;
  if (o_.step_latency_ms &&
      static_cast<double>(now - start_ns_) >= o_.step_after_s * 1e9)
    ms = *o_.step_latency_ms;
  return ms * 1000000;
}

json server::stats_json() const {
  int64_t now = mono_ns();
  json by_class = json::object();
  for (size_t i = 0; i < n_.by_class.size(); ++i) {
    if (n_.by_class[i].empty()) continue;
    json s = json::object();
    for (const auto& [status, count] : n_.by_class[i]) s[std::to_string(status)] = count;
    by_class[class_names[i]] = s;
  }
  json by_status = json::object();
  for (const auto& [status, count] : n_.by_status) by_status[std::to_string(status)] = count;
  const histogram& h = n_.latency;
  long rss_pages = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    long size = 0;
    if (std::fscanf(f, "%ld %ld", &size, &rss_pages) != 2) rss_pages = 0;
    std::fclose(f);
  }
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  json config = {{"latency_ms", o_.latency_ms},
                 {"capacity", o_.capacity},
                 {"retry_after_s", o_.retry_after_s},
                 {"tokens_per_user", o_.tokens_per_user},
                 {"h2_max_streams", o_.h2_max_streams},
                 {"api_key_required", !o_.api_key.empty()},
                 {"nofile", static_cast<uint64_t>(rl.rlim_cur)}};
  if (o_.step_latency_ms) {
    config["latency_step_ms"] = *o_.step_latency_ms;
    config["step_after_s"] = o_.step_after_s;
  }
  return {
      {"listening", listening_},
      {"uptime_s", round3(static_cast<double>(now - start_ns_) / 1e9)},
      {"latency_ms_now", latency_ns(now) / 1000000},
      {"config", config},
      {"requests", {{"total", n_.total}, {"by_class", by_class}, {"by_status", by_status}}},
      {"refused", n_.refused},
      {"abandoned", n_.abandoned},
      {"in_flight", n_.in_flight},
      {"max_in_flight", n_.max_in_flight},
      {"connections",
       {{"accepted", n_.accepted},
        {"http1", n_.http1},
        {"http2", n_.http2},
        {"open", n_.open},
        {"max_open", n_.max_open},
        {"accept_errors", n_.accept_errors},
        {"closed_for_overflow", n_.overflow_closed}}},
      {"h2_streams", n_.h2_streams},
      {"h2_protocol_errors", n_.h2_protocol_errors},
      {"latency_ms",
       {{"count", h.count()},
        {"mean", round3(h.mean() / 1e6)},
        {"p50", ns_to_ms(h.quantile(0.50))},
        {"p90", ns_to_ms(h.quantile(0.90))},
        {"p99", ns_to_ms(h.quantile(0.99))},
        {"p999", ns_to_ms(h.quantile(0.999))},
        {"max", ns_to_ms(h.max())}}},
      {"rss_kib", rss_pages * (::sysconf(_SC_PAGESIZE) / 1024)},
  };
}

void server::run() {
  std::vector<epoll_event> events(1024);
  for (;;) {
    arm_timer();
    int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      uint64_t key = events[i].data.u64;
      int fd = static_cast<int>(key & ((uint64_t{1} << fd_bits) - 1));
      uint64_t gen = key >> fd_bits;
      if (gen == 0) {
        if (fd == listen_) accept_all();
        else if (fd == timer_) fire_timers();
        else if (fd == signal_) on_signal();
        continue;
      }
      conn* c = lookup(fd, gen);
      if (!c || c->dead) continue;
      uint32_t ev = events[i].events;
      if (ev & (EPOLLERR | EPOLLHUP)) {
        c->dead = true;  // reset, or both directions closed: nobody to answer
        mark_dirty(*c);
        continue;
      }
      if (ev & EPOLLIN) read_some(*c);
      if (ev & EPOLLOUT) mark_dirty(*c);
    }
    settle_dirty();
  }
}

void server::arm_timer() {
  if (timers_.empty() || timers_.top().due == armed_ns_) return;
  armed_ns_ = timers_.top().due;
  itimerspec its{};
  its.it_value.tv_sec = armed_ns_ / 1000000000;
  its.it_value.tv_nsec = armed_ns_ % 1000000000;
  if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
  ::timerfd_settime(timer_, TFD_TIMER_ABSTIME, &its, nullptr);
}

void server::fire_timers() {
  uint64_t expirations = 0;
  if (::read(timer_, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("read timerfd");
  armed_ns_ = 0;
  const int64_t now = mono_ns();
  while (!timers_.empty() && timers_.top().due <= now) {
    timer_entry t = timers_.top();
    timers_.pop();
    if (t.fd < 0) {
      resume_accept();
      continue;
    }
    conn* c = lookup(t.fd, t.gen);
    if (!c || c->dead) continue;
    if (c->p == proto::h1) {
      if (!c->h1_pending || c->h1_seq != static_cast<uint64_t>(t.tag)) continue;
      pending_answer a = std::move(*c->h1_pending);
      c->h1_pending.reset();
      finish(*c, 0, a);
      h1_process(*c);  // a pipelined request behind it
    } else if (c->p == proto::h2) {
      h2_stream* s = stream_of(*c, static_cast<int32_t>(t.tag));
      if (!s || !s->pending) continue;  // reset by the client meanwhile
      pending_answer a = std::move(*s->pending);
      s->pending.reset();
      finish(*c, static_cast<int32_t>(t.tag), a);
    }
  }
}

void server::on_signal() {
  std::printf("%s\n", json_text([&] {
                        json j = stats_json();
                        j["final"] = true;
                        return j;
                      }())
                          .c_str());
  std::fflush(stdout);
  std::exit(0);
}

conn* server::lookup(int fd, uint64_t gen) {
  if (fd < 0 || static_cast<size_t>(fd) >= conns_.size()) return nullptr;
  conn* c = conns_[static_cast<size_t>(fd)].get();
  return c && c->gen == gen ? c : nullptr;
}

void server::accept_all() {
  for (int k = 0; k < 512; ++k) {
    int fd = ::accept4(listen_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      ++n_.accept_errors;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) pause_accept();
      return;
    }
    if (fd >= (1 << fd_bits)) {
      ::close(fd);
      ++n_.accept_errors;
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<conn>();
    c->fd = fd;
    c->gen = ++next_gen_;
    c->events = EPOLLIN;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = static_cast<uint64_t>(fd) | (c->gen << fd_bits);
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      ++n_.accept_errors;
      continue;
    }
    if (conns_.size() <= static_cast<size_t>(fd)) conns_.resize(static_cast<size_t>(fd) + 1024);
    conns_[static_cast<size_t>(fd)] = std::move(c);
    ++n_.accepted;
    n_.max_open = std::max(n_.max_open, ++n_.open);
  }
}

void server::pause_accept() {
  // Out of descriptors: stop polling the listener (it would spin) until a
  // connection closes, or 100 ms from now.
  if (accept_paused_) return;
  accept_paused_ = true;
  epoll_event ev{};
  ev.data.u64 = static_cast<uint64_t>(listen_);
  ::epoll_ctl(ep_, EPOLL_CTL_MOD, listen_, &ev);
  timers_.push({mono_ns() + 100000000, -1, 0, 0});
}

void server::resume_accept() {
  if (!accept_paused_) return;
  accept_paused_ = false;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = static_cast<uint64_t>(listen_);
  ::epoll_ctl(ep_, EPOLL_CTL_MOD, listen_, &ev);
}

void server::mark_dirty(conn& c) {
  if (c.dirty) return;
  c.dirty = true;
  dirty_.push_back({c.fd, c.gen});
}

void server::settle_dirty() {
  std::vector<std::pair<int, uint64_t>> batch;
  while (!dirty_.empty()) {
    batch.swap(dirty_);
    for (auto [fd, gen] : batch) {
      conn* c = lookup(fd, gen);
      if (!c) continue;
      c->dirty = false;
      settle(*c);
    }
    batch.clear();
  }
}

/// Writes what is queued, then closes the connection or updates its epoll events.
void server::settle(conn& c) {
  if (!c.dead && c.p == proto::h2) {
    while (c.out.size() - c.out_off < max_out_bytes) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(c.session, &data);
      if (n < 0) {
        c.dead = true;
        break;
      }
      if (n == 0) break;
      c.out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
  }
  if (!c.dead) write_out(c);
  if (!c.dead && c.out_off == c.out.size()) {
    if (c.close_after_write) {
      ::shutdown(c.fd, SHUT_WR);
      c.dead = true;
    } else if (c.p == proto::h2 && !nghttp2_session_want_read(c.session) &&
               !nghttp2_session_want_write(c.session)) {
      c.dead = true;
    } else if (c.read_closed && !(c.p == proto::h1 && c.h1_pending)) {
      c.dead = true;
    }
  }
  if (c.dead) {
    close_conn(c);
    return;
  }
  uint32_t want = (c.read_closed ? 0u : uint32_t{EPOLLIN}) |
                  (c.out_off < c.out.size() ? uint32_t{EPOLLOUT} : 0u);
  set_events(c, want);
}

void server::set_events(conn& c, uint32_t events) {
  if (c.events == events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = static_cast<uint64_t>(c.fd) | (c.gen << fd_bits);
  if (::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev) == 0) c.events = events;
}

void server::write_out(conn& c) {
  while (c.out_off < c.out.size()) {
    ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      c.dead = true;  // EPIPE, ECONNRESET: the client is gone
      return;
    }
  }
  c.out.clear();
  c.out_off = 0;
  if (c.out.capacity() > 64 * 1024) c.out.shrink_to_fit();
}

void server::close_conn(conn& c) {
  if (c.p == proto::h1 && c.h1_pending) {
    --n_.in_flight;
    ++n_.abandoned;
  }
  for (auto& [id, s] : c.streams)
    if (s->pending) {
      --n_.in_flight;
      ++n_.abandoned;
    }
  c.closing = true;
  int fd = c.fd;
  ::close(fd);  // also leaves the epoll set
  --n_.open;
  conns_[static_cast<size_t>(fd)].reset();  // destroys c (and its nghttp2 session)
  resume_accept();
}

void server::read_some(conn& c) {
  static char buf[64 * 1024];
  for (int round = 0; round < 4 && !c.dead && !c.read_closed; ++round) {
    ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (c.close_after_write) continue;  // after a 400: the rest is not read
      c.in.append(buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof buf) break;
    } else if (n == 0) {
      c.read_closed = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else {
      c.dead = true;  // ECONNRESET: the client vanished
    }
  }
  if (!c.dead) process(c);
  mark_dirty(c);
}

void server::process(conn& c) {
  if (c.p == proto::unknown) {
    size_t k = std::min(c.in.size(), h2_preface.size());
    if (c.in.compare(0, k, h2_preface.data(), k) != 0) {
      c.p = proto::h1;
      ++n_.http1;
    } else if (k == h2_preface.size()) {
      start_h2(c);
      if (c.dead) return;
    } else {
      if (c.read_closed) c.dead = true;  // closed within the preface
      return;
    }
  }
  if (c.p == proto::h1) {
    h1_process(c);
    if (!c.dead && c.in.size() > max_buffered_bytes) {
      ++n_.overflow_closed;
      c.dead = true;
    }
    return;
  }
  // HTTP/2: nghttp2 takes everything (the preface included) or fails the session.
  if (!c.in.empty()) {
    ssize_t rv = nghttp2_session_mem_recv(c.session, reinterpret_cast<const uint8_t*>(c.in.data()),
                                          c.in.size());
    c.in.clear();
    if (rv < 0) {
      ++n_.h2_protocol_errors;
      c.dead = true;
      return;
    }
    if (c.in.capacity() > 64 * 1024) c.in.shrink_to_fit();
  }
  if (c.read_closed) c.dead = true;
}

void server::start_h2(conn& c) {
  c.p = proto::h2;
  ++n_.http2;
  if (nghttp2_session_server_new2(&c.session, h2_callbacks_, &c, h2_option_) != 0) {
    c.session = nullptr;
    c.dead = true;
    return;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, static_cast<uint32_t>(o_.h2_max_streams)}};
  if (nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, iv, 1) != 0) c.dead = true;
}

void server::h1_process(conn& c) {
  while (!c.dead && !c.h1_pending && !c.close_after_write) {
    size_t skip = 0;  // empty lines before a request line are ignored (RFC 9112 2.2)
    while (skip < c.in.size() && (c.in[skip] == '\r' || c.in[skip] == '\n')) ++skip;
    if (skip) c.in.erase(0, skip);
    if (c.in.empty()) break;
    h1_parse r = parse_h1(c.in);
    if (r.st == h1_parse::state::need_more) {
      if (r.expect_continue && !c.continue_sent) {
        c.out += "HTTP/1.1 100 Continue\r\n\r\n";
        c.continue_sent = true;
        mark_dirty(c);
      }
      break;
    }
    if (r.st == h1_parse::state::error) {
      h1_error(c, r.status, r.why);
      break;
    }
    c.in.erase(0, r.consumed);
    c.continue_sent = false;
    c.h1_keep_alive = r.keep_alive;
    dispatch(c, 0, std::move(r.req), r.head);
  }
  if (c.in.empty() && c.in.capacity() > 64 * 1024) c.in.shrink_to_fit();
}

void server::h1_error(conn& c, int status, const std::string& why) {
  ++n_.total;
  ++n_.by_class[static_cast<size_t>(route_class::malformed)][status];
  ++n_.by_status[status];
  response r = error_answer(status, "bad_request", why);
  c.h1_keep_alive = false;
  c.in.clear();
  send_response(c, 0, r, false);
}

void server::dispatch(conn& c, int32_t stream_id, request&& req, bool head) {
  const int64_t now = mono_ns();
  if (req.too_large) {  // HTTP/2 (HTTP/1.1 refuses it while parsing)
    ++n_.h2_streams;
    ++n_.total;
    ++n_.by_class[static_cast<size_t>(route_class::malformed)][413];
    ++n_.by_status[413];
    response r = error_answer(413, "bad_request", "body over 1 MiB");
    send_response(c, stream_id, r, false);
    return;
  }
  if ((req.method == "GET" || req.method == "HEAD") && path_of(req.target) == "/_stats") {
    response r = answer(200, json_text(stats_json()));
    send_response(c, stream_id, r, head);
    return;
  }
  if (c.p == proto::h2) ++n_.h2_streams;
  routed rt = route(req, o_, sequence_);
  if (o_.capacity > 0 && n_.in_flight >= o_.capacity) {
    ++n_.refused;
    ++n_.total;
    ++n_.by_class[static_cast<size_t>(rt.cls)][503];
    ++n_.by_status[503];
    response r = error_answer(503, "unavailable", "The fake upstream is at capacity.");
    r.headers.push_back({"Retry-After", std::to_string(o_.retry_after_s)});
    send_response(c, stream_id, r, head);
    return;
  }
  n_.max_in_flight = std::max(n_.max_in_flight, ++n_.in_flight);
  pending_answer a{rt.cls, std::move(rt.resp), now, head};
  const int64_t delay = latency_ns(now);
  if (delay <= 0) {
    finish(c, stream_id, a);
    return;
  }
  int64_t tag = stream_id;
  if (c.p == proto::h1) {
    c.h1_pending = std::move(a);
    tag = static_cast<int64_t>(++c.h1_seq);
  } else {
    h2_stream* s = stream_of(c, stream_id);
    if (!s) {  // cannot happen: the stream is open while its request is dispatched
      --n_.in_flight;
      return;
    }
    s->pending = std::move(a);
  }
  timers_.push({now + delay, c.fd, c.gen, tag});
}

void server::finish(conn& c, int32_t stream_id, pending_answer& a) {
  --n_.in_flight;
  ++n_.total;
  ++n_.by_class[static_cast<size_t>(a.cls)][a.resp.status];
  ++n_.by_status[a.resp.status];
  n_.latency.record(static_cast<uint64_t>(std::max<int64_t>(0, mono_ns() - a.done_ns)));
  send_response(c, stream_id, a.resp, a.head);
}

void server::stream_closed(conn& c, int32_t stream_id) {
  auto it = c.streams.find(stream_id);
  if (it == c.streams.end()) return;
  if (it->second->pending) {  // reset before its answer
    --n_.in_flight;
    ++n_.abandoned;
  }
  c.streams.erase(it);
}

void server::send_response(conn& c, int32_t stream_id, response& r, bool head) {
  const bool no_body = r.status == 204 || r.status == 304 || r.status < 200;
  if (c.p == proto::h1) {
    const bool close = !c.h1_keep_alive || c.read_closed;
    std::string& o = c.out;
    o += "HTTP/1.1 ";
    o += std::to_string(r.status);
    o += ' ';
    o += reason_phrase(r.status);
    o += "\r\n";
    if (!no_body) {
      o += "Content-Type: ";
      o += r.content_type;
      o += "\r\nContent-Length: ";
      o += std::to_string(r.body.size());
      o += "\r\n";
    }
    for (const auto& [name, value] : r.headers) {
      o += name;
      o += ": ";
      o += value;
      o += "\r\n";
    }
    if (close) o += "Connection: close\r\n";
    o += "\r\n";
    if (!no_body && !head) o += r.body;
    if (close) c.close_after_write = true;
    mark_dirty(c);
    return;
  }
  h2_stream* s = stream_of(c, stream_id);
  if (!s) return;
  auto nv = [](const std::string& name, const std::string& value) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                      value.size(), NGHTTP2_NV_FLAG_NONE};
  };
  std::vector<std::pair<std::string, std::string>> fields;
  fields.reserve(3 + r.headers.size());
  fields.push_back({":status", std::to_string(r.status)});
  if (!no_body) {
    fields.push_back({"content-type", r.content_type});
    fields.push_back({"content-length", std::to_string(r.body.size())});
  }
  for (const auto& [name, value] : r.headers) {
    std::string lower_name(name);
    for (char& ch : lower_name) ch = lower(ch);
    fields.push_back({std::move(lower_name), value});
  }
  std::vector<nghttp2_nv> nva;
  nva.reserve(fields.size());
  for (const auto& [name, value] : fields) nva.push_back(nv(name, value));
  nghttp2_data_provider body{};
  const bool with_body = !no_body && !head && !r.body.empty();
  if (with_body) {
    s->out_body = std::move(r.body);
    s->out_off = 0;
    body.source.ptr = s;
    body.read_callback = read_body;
  }
  if (nghttp2_submit_response(c.session, stream_id, nva.data(), nva.size(),
                              with_body ? &body : nullptr) != 0)
    nghttp2_submit_rst_stream(c.session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
  mark_dirty(c);
}

}  // namespace

int main(int argc, char** argv) {
  options o = parse_args(argc, argv);
  static server s(std::move(o));
  the_server = &s;
  s.start();
  s.run();
}
