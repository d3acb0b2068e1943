// An event-driven HTTP client (issue 19): one thread owns one libcurl multi
// handle and drives every transfer with epoll and libcurl's socket API, so a
// request that waits on the network holds no thread. Thousands of requests can
// be in flight on that one thread; they share its connections (HTTP/1.1
// keep-alive, HTTP/2 streams on one connection).
//
//   http_loop loop;                       // starts the thread
//   auto id = loop.submit({"GET", url, {}, std::nullopt},
//                         [](http_response r) { /* on the loop thread */ });
//   loop.cancel(id);                      // optional: the callback gets "cancelled"
//
// A request means what it means to http_session (http.hpp): the timeouts, CA
// file and body limit of http_options, no redirects, response header names
// lower-cased, status 0 and `error` when there was no answer, `timed_out` when
// a timer expired; classify() turns the answer into a job outcome as usual.
//
// Threading: submit(), cancel() and snapshot() may be called from any thread,
// callbacks included. Callbacks run on the loop thread ("klynaa-http"), one at
// a time, in no promised order, except the one of a submit() to a loop that is
// not running, which runs on the caller's thread before submit() returns. A
// callback holds up every other request of the loop while it runs: it must be
// quick, must not block, and should only hand the answer on (e.g.
// caf::anon_send, which is thread-safe). Exceptions thrown by a callback are
// caught and dropped. Host names are resolved on libcurl's short-lived resolver
// threads (one per lookup; answers are cached for 60 s).
//
// The timeouts and CA file come from the nodes' configuration
// (docs/configuration.md, [django] and [notifications]). Nothing here throws.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/http.hpp"
#include "actors/limiter.hpp"

namespace klynaa::actors {

class http_loop {
 public:
  struct options {
    /// Connect and total timeouts, CA file and body limit of every request
    /// (a request's total timeout can be overridden in submit()).
    http_options http;
    /// At most this many connections to one host (CURLMOPT_MAX_HOST_CONNECTIONS;
    /// 0 = no bound). Requests beyond it wait inside libcurl for a free
    /// connection, and that wait counts towards their timeout. On HTTP/2 a
    /// connection carries up to 100 requests at once (libcurl's default
    /// CURLMOPT_MAX_CONCURRENT_STREAMS, unless the server allows fewer) before
    /// the next one opens.
    int max_host_connections = 64;
    /// At most this many connections in all (CURLMOPT_MAX_TOTAL_CONNECTIONS);
    /// 0 = no bound. Each connection is a file descriptor of the process.
    int max_total_connections = 0;
    /// true: http:// URLs speak HTTP/2 in cleartext from the first byte (h2c
    /// with prior knowledge, CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE), for a local
    /// upstream known to speak it; only where h2c_supported(), else ignored.
    /// false: http:// is HTTP/1.1. Either way https:// negotiates HTTP/2 by ALPN
    /// and falls back to HTTP/1.1.
    bool http2_prior_knowledge = false;
    /// Idle easy handles kept for reuse after a burst; the rest are freed.
    int max_idle_handles = 256;
    /// The adaptive in-flight limits of tagged requests (see limit_tag).
    downstream_limit_options limits;
  };

  /// Which adaptive in-flight limit a request counts against
  /// (docs/reliability.md, "Adaptive in-flight limits"): its downstream
  /// ("django", "firebase", "sns", "webhook") and the job function that calls it. A
  /// tagged request waits in the loop, in order, until the limit of its pair and
  /// its downstream's cap let it start; that wait does not count towards its
  /// timeout. While a Retry-After on a 429 from that downstream pauses it,
  /// a tagged request is answered at once with status 0 and circuit_open_ms set
  /// to the pause left, which classify() turns into the deferred outcome
  /// "circuit_open" (no attempt spent). An empty downstream: no limit.
  struct limit_tag {
    std::string downstream;
    std::string function;
  };

  /// Receives the one answer of a request: an http_response as http_session
  /// returns it, or status 0 with `error` == cancelled_error (after cancel() or
  /// at destruction) or stopped_error (the loop was not running). Runs on the
  /// loop thread (see the file comment); must be quick.
  using callback = std::function<void(http_response)>;

  /// The `error` of a request cancelled by cancel() or by the destructor.
  static constexpr const char* cancelled_error = "cancelled";
  /// The `error` of a request submitted to a loop that is not running: its
  /// thread or handles could not be created (start_error() says why), it is
  /// being destroyed, or libcurl failed (out of memory; the requests it held were
  /// answered with "the http loop failed: ...").
  static constexpr const char* stopped_error = "the http loop is not running";

  /// Creates the multi handle, the epoll and eventfd descriptors and the loop
  /// thread. Never throws: on failure, start_error() says why, and every
  /// submit() is answered at once with stopped_error.
  explicit http_loop(options o);
  http_loop();  ///< with the default options

  /// Stops the loop thread. Before it returns, every request not answered yet
  /// (in flight, or submitted and not started) gets its callback once, on the
  /// loop thread, with status 0 and cancelled_error; a submit() made by one of
  /// those callbacks is answered at once with stopped_error. Closes every
  /// connection. Calls from other threads must not race with the destructor.
  ~http_loop();

  http_loop(const http_loop&) = delete;
  http_loop& operator=(const http_loop&) = delete;

  /// Sends `req` (method, URL, headers, body as in http_session::request) and
  /// returns at once with the request's id (unique in this loop, never 0).
  /// `cb` runs exactly once with the answer: success, HTTP error, no answer,
  /// timeout, cancel or shutdown. `timeout_ms` > 0 replaces the options' total
  /// timeout for this request (the connect timeout stays); it counts from when
  /// the loop starts the request, waiting for a free connection included (the
  /// loop enforces it there, at most 100 ms late, where libcurl does not). The loop
  /// owns `req` and `cb` and destroys them right after the callback returns,
  /// on the thread that ran it. Thread-safe.
  /// `tag`: the adaptive limit it counts against (limit_tag). `http`: this
  /// request's own timeouts, CA file and body limit instead of the options'
  /// (copied), for a loop shared by clients with different settings.
  uint64_t submit(http_request req, callback cb, int64_t timeout_ms = 0, limit_tag tag = {},
                  const http_options* http = nullptr);

  /// Stops request `id` if it has not been answered yet: its callback then runs
  /// once, on the loop thread, with status 0 and cancelled_error, and whatever
  /// the server answers later is dropped (its connection is closed or, if
  /// reusable, kept). An id already answered, or unknown, is ignored. Returns at
  /// once: the callback runs later, unless it is already running. Thread-safe.
  void cancel(uint64_t id);

  /// Counters since construction. Thread-safe; each counter is read on its own,
  /// so a snapshot taken while requests complete may be off by those requests.
  struct stats {
    int64_t submitted = 0;   ///< submit() calls
    int64_t completed = 0;   ///< callbacks started (every kind of answer)
    int64_t in_flight = 0;   ///< submitted - completed: requests waiting for their callback
    /// Of those, waiting for their limit (not sent yet), as of the loop's last pass.
    int64_t waiting = 0;
    int64_t failed = 0;      ///< answered with status 0 (all below included)
    int64_t timed_out = 0;   ///< answered with timed_out set
    int64_t cancelled = 0;   ///< answered with cancelled_error
    /// Sockets libcurl opened to connect (one per connection attempt): requests
    /// that reuse a connection or share it as HTTP/2 streams open none.
    int64_t connections_opened = 0;
    int64_t connections_open = 0;  ///< of those, open now (busy or idle in the cache)
  };
  stats snapshot() const;

  /// Every (downstream, function) limit the loop has used, with its in-flight
  /// count and latencies (actors/limiter.hpp), plus the requests waiting for it.
  /// Thread-safe: a copy taken under the limiter's lock.
  struct limit_stats {
    std::vector<function_limit_snapshot> limits;
    std::map<std::string, int64_t> waiting;  ///< downstream -> requests waiting for a slot
  };
  limit_stats limits() const;

  /// Why the loop could not start, or "" when it runs. Thread-safe.
  const std::string& start_error() const;

  const options& config() const;

  /// Whether this libcurl can reuse an h2c connection, so that
  /// http2_prior_knowledge is honoured: libcurl >= 8.0.0 with HTTP/2. Before
  /// 8.0.0 (Debian 12 has 7.88.1) every request that reuses an h2c connection
  /// fails with "Error in the HTTP2 framing layer" (curl issue #10634), so the
  /// loop speaks HTTP/1.1 to http:// URLs instead. HTTP/2 over TLS is not
  /// affected.
  static bool h2c_supported();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// The loop's counters and its adaptive limits as the node reports them to the
/// broker (node_stats "limits"; `klynaa stats`, /metrics and the dashboard show
/// them): {"in_flight", "connections_open", "connections_opened", "downstreams":
/// {NAME: {"in_flight", "max_in_flight", "waiting", "paused_ms", "functions":
/// {FUNCTION: {"limit", "in_flight", "min_rtt_ms", "latency_ms"}}}}}.
nlohmann::json limits_json(const http_loop& loop);

}  // namespace klynaa::actors
