// klynaa-upstream's server (bench/fake_upstream.cpp): one thread, one epoll
// loop; each connection speaks HTTP/1.1 or cleartext HTTP/2 (libnghttp2's server
// session), chosen by its first bytes. Answers wait for the current latency on
// a min-heap of due times woken by one timerfd; above --capacity in flight a
// request is refused at once with 503. upstream_server.cpp has the loop and the
// connections, upstream_exchange.cpp the requests and answers of both protocols.
#pragma once

#include <time.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
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

#include "protocol/histogram.hpp"
#include "bench/upstream_options.hpp"
#include "bench/upstream_routes.hpp"

namespace klynaa::upstream {

using klynaa::protocol::histogram;

constexpr size_t max_buffered_bytes = 4 * 1024 * 1024;  // unread input behind a pending answer
constexpr size_t max_out_bytes = 1024 * 1024;           // HTTP/2: serialise no further above this
constexpr std::string_view h2_preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr int fd_bits = 24;  // epoll data: fd in the low 24 bits, the connection's generation above

inline int64_t mono_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

inline double round3(double v) { return std::round(v * 1000.0) / 1000.0; }
inline double ns_to_ms(uint64_t ns) { return round3(static_cast<double>(ns) / 1e6); }

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

/// The server, for the nghttp2 callbacks (set in main before start()).
extern server* the_server;

/// The open stream `id` of an HTTP/2 connection, or null.
h2_stream* stream_of(conn& c, int32_t id);

/// Sets the nghttp2 callbacks of a server session (upstream_exchange.cpp).
void set_h2_callbacks(nghttp2_session_callbacks* callbacks);

}  // namespace klynaa::upstream
