// Blocking HTTP clients on libcurl, and the rules that turn an HTTP answer into a
// job outcome (docs/events-and-functions.md, "Failures and retries").
//
//  - http_session: one request at a time on one reused easy handle. The Django
//    client (django_client.hpp) and the OAuth2 token source (firebase.hpp) use it.
//  - http_multi: a batch of requests at once on one libcurl multi handle, whose
//    connection cache outlives the batch. The webhook, firebase and sns push
//    providers use it, so the pushes of one job go out concurrently.
//
// Both follow the same rules: the timeouts, CA file and body limit of
// http_options, no redirects, response header names lower-cased, status 0 and
// `error` when there was no answer.
//
// Threading: an http_session or http_multi is used by one thread at a time (the
// node runtime makes one job handler, and so one client, per worker thread).
// Reusing handles keeps connections to the server open between requests
// (docs/events-and-functions.md, "The Django API": connections are reused).
// Different clients may run in parallel.
// Nothing here throws.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "nodes/job.hpp"

namespace klynaa::actors {

class http_loop;

/// One HTTP answer, or the reason there was none.
struct http_response {
  int status = 0;     ///< HTTP status; 0 = no answer (connection error, timeout, ...)
  std::string body;   ///< the response body, as received
  /// Response headers, names lower-cased (e.g. "retry-after"). A repeated header
  /// keeps its last value.
  std::map<std::string, std::string> headers;
  std::string error;  ///< libcurl's error text when status == 0, else ""
  bool timed_out = false;  ///< status == 0 because a timeout expired
  /// >= 0: not sent at all, the service's circuit breaker is open; try again in
  /// this many milliseconds (actors/breaker.hpp). classify() makes it "circuit_open".
  int64_t circuit_open_ms = -1;

  /// The value of header `lower_case_name`, if present.
  std::optional<std::string> header(const std::string& lower_case_name) const;
};

/// One request header, e.g. {"Idempotency-Key", "escrow-release-7"}.
struct http_header {
  std::string name;
  std::string value;
};

/// Options of a session. Timeouts are in milliseconds; both must be positive.
struct http_options {
  int64_t connect_timeout_ms = 2000;  ///< to establish the TCP (and TLS) connection
  int64_t timeout_ms = 10000;         ///< for the whole request, connect included
  std::string ca_file;                ///< CA bundle for HTTPS; "" = the system's
  /// Bodies larger than this are cut off and the request fails (status 0): a
  /// misbehaving server cannot make a worker allocate without bound.
  size_t max_body_bytes = 64u << 20;
  /// Set by the node for kinds whose jobs run on fibers (nodes/suspend.hpp): a
  /// request made on a job fiber goes through this event loop (http_loop.hpp)
  /// and suspends the fiber, not its thread, until the answer is in; it counts
  /// against the adaptive limit of (`downstream`, the job's function). Null, or
  /// called off a job fiber: the request blocks its thread as before.
  std::shared_ptr<http_loop> loop;
  /// The downstream's name for its limit and stats: "django", "firebase", "sns", "webhook".
  std::string downstream;
};

/// A blocking HTTP/1.1 client on one reused libcurl easy handle. Redirects are
/// not followed (a 3xx is returned as is). Not copyable; movable.
class http_session {
 public:
  explicit http_session(http_options opts = {});
  ~http_session();
  http_session(http_session&&) noexcept;
  http_session& operator=(http_session&&) noexcept;
  http_session(const http_session&) = delete;
  http_session& operator=(const http_session&) = delete;

  /// Sends `method` ("GET", "POST", "DELETE", ...) to `url` with `headers`, and
  /// `body` when it has a value (an empty string sends an empty body). Blocks up
  /// to the session's timeout. Never throws: every failure to get an answer comes
  /// back as status 0 with `error` set.
  http_response request(std::string_view method, const std::string& url,
                        const std::vector<http_header>& headers,
                        const std::optional<std::string>& body = std::nullopt);

  /// Percent-encodes `text` for one URL path segment or query value (RFC 3986:
  /// everything but ALPHA / DIGIT / "-" / "." / "_" / "~").
  static std::string escape(std::string_view text);

  const http_options& options() const { return opts_; }

 private:
  struct impl;
  http_options opts_;
  std::unique_ptr<impl> impl_;
};

/// One request of an http_multi batch. `body` as in http_session::request.
struct http_request {
  std::string method;  ///< "GET", "POST", ...
  std::string url;
  std::vector<http_header> headers;
  std::optional<std::string> body;
};

/// Runs batches of requests concurrently on one libcurl multi handle. At most
/// `max_connections` requests of a batch are in flight at once; the next one
/// starts when one finishes, so each request's timeout counts from its own start
/// (never from the start of the batch), exactly as in http_session. The multi
/// handle's connection cache keeps up to `max_connections` idle connections open
/// between batches (docs/events-and-functions.md, "The Django API": connections are
/// reused), and the easy handles
/// are reused too. Not copyable; movable.
class http_multi {
 public:
  /// The default bound on connections per host (and requests in flight).
  static constexpr int default_max_connections = 8;

  /// `max_connections` below 1 counts as 1.
  explicit http_multi(http_options opts = {}, int max_connections = default_max_connections);
  ~http_multi();
  http_multi(http_multi&&) noexcept;
  http_multi& operator=(http_multi&&) noexcept;
  http_multi(const http_multi&) = delete;
  http_multi& operator=(const http_multi&) = delete;

  /// Sends every request of `requests` and waits for all of them; returns one
  /// response per request, in the same order, each as http_session::request
  /// would have returned it. Blocks until the last request is answered or timed
  /// out. Never throws.
  std::vector<http_response> perform(const std::vector<http_request>& requests);

  /// A batch of one.
  http_response request(std::string_view method, const std::string& url,
                        const std::vector<http_header>& headers,
                        const std::optional<std::string>& body = std::nullopt);

  const http_options& options() const { return opts_; }
  int max_connections() const { return max_connections_; }

 private:
  struct impl;
  void init_multi();

  http_options opts_;
  int max_connections_;
  std::unique_ptr<impl> impl_;
};

/// Parses a Retry-After value (RFC 9110 §10.2.3): delay-seconds ("120") or an
/// HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT", also the obsolete RFC 850 and
/// asctime forms). Returns the delay in ms from `now_ms` (never negative), or
/// nothing when the value is neither.
std::optional<int64_t> parse_retry_after(std::string_view value, int64_t now_ms);

/// The failure rules (docs/events-and-functions.md, "Failures and retries") for one
/// HTTP answer. `what` names the call for the message, e.g.
/// "GET /api/serverless/pickups/7/" (never a URL with credentials in it).
///  - 2xx: outcome::ok with an empty result; the caller reads the body.
///  - no answer (connection refused, DNS, TLS, reset, timeout): transient,
///    error_code "timeout" or "connect".
///  - 408, 429, 5xx: transient, error_code "http_{status}"; on 429 and 503 a valid
///    Retry-After sets retry_after_ms.
///  - any other 4xx: permanent, error_code "http_{status}".
///  - 1xx/3xx (redirects are not followed): permanent, error_code "http_{status}":
///    a redirect from an API means a wrong base URL, and retrying cannot fix that.
/// http_status is set whenever the server answered.
nodes::job_result classify(const http_response& r, std::string_view what);

/// The failure for a 2xx answer whose body is not the documented JSON: transient,
/// error_code "bad_response". Transient rather than permanent because the usual
/// cause is a proxy or load balancer answering for the API (an HTML error page
/// with status 200) during a deploy; a retry then reaches the real API. Every
/// such answer is counted under outcome "bad_response" (downstream_counts()).
/// `status` is the 2xx status that came with the bad body.
nodes::job_result bad_response(int status, std::string_view service, std::string_view what,
                               std::string_view detail);

/// Process-wide counts of downstream calls by {service, outcome}, for the metric
/// `klynaa_downstream_requests_total{service,outcome}` (docs/operations.md, "Watching
/// it"). Outcomes:
/// "1xx" ... "5xx" and "no_answer" (one per request, counted by the callers of
/// request() through count_downstream), and "bad_response", a subset of "2xx"
/// counted again when the body was unusable. Thread-safe.
std::map<std::pair<std::string, std::string>, uint64_t> downstream_counts();

/// Adds one to the count of {service, outcome}. Thread-safe.
void count_downstream(std::string_view service, std::string_view outcome);

/// True when `r` is no answer from the server at all, but the node's own doing:
/// cancelled (a job past its time limit, a node stopping) or never sent (a
/// downstream paused by Retry-After, circuit_open_ms set). Circuit breakers
/// must not count those (docs/reliability.md).
bool not_an_answer(const http_response& r);

/// The outcome label of an answer: "2xx" ... "5xx" or "no_answer".
std::string_view outcome_label(const http_response& r);

}  // namespace klynaa::actors
