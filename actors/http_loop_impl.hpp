// Internal to actors/: the state of an http_loop (http_loop.hpp) that its three
// source files share. http_loop.cpp runs the thread (start, stop, the epoll loop,
// the inbox) and the public calls; http_loop_limits.cpp holds the adaptive
// in-flight limits (admit, pump, settle, limits_json); http_loop_transfer.cpp
// puts a request on a libcurl easy handle, takes it off again and holds
// libcurl's socket and timer callbacks. Ownership and locking: see the comment
// at the top of http_loop.cpp. Include it only from actors/http_loop*.cpp.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actors/http_curl.hpp"
#include "actors/http_loop.hpp"

namespace klynaa::actors {
namespace loop_detail {

using steady = std::chrono::steady_clock;

/// How long after a request's timeout the loop answers it if libcurl has not:
/// see expire().
constexpr std::chrono::milliseconds deadline_grace{100};

/// One request, from submit() to its callback.
struct job {
  uint64_t id = 0;
  http_request req;
  http_loop::callback cb;
  int64_t timeout_ms = 0;
  http_loop::limit_tag tag;  // empty downstream: no limit
  std::optional<http_options> http;  // this request's own options, else the loop's
  bool acquired = false;     // holds a slot of tag's limit (see admit())
  steady::time_point started{};
  // While libcurl transfers it:
  std::optional<std::chrono::steady_clock::time_point> deadline;  // see expire()
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  http_response response;
  detail::transfer t{nullptr, 0};
  char error[CURL_ERROR_SIZE] = {0};
};

/// What another thread asks of the loop: start `submitted`, or else cancel
/// request `cancel_id`.
struct command {
  std::unique_ptr<job> submitted;
  uint64_t cancel_id = 0;
};

inline http_response no_answer(std::string error) {
  http_response r;
  r.error = std::move(error);
  return r;
}

inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now().time_since_epoch()).count();
}

}  // namespace loop_detail

struct http_loop::impl {
  using steady = loop_detail::steady;
  using job = loop_detail::job;
  using command = loop_detail::command;

  explicit impl(options o) : opts(std::move(o)) {}
  ~impl();

  // Constructor, destructor and the thread.
  void start();
  void stop();
  void run();
  void shutdown(const std::string& error);

  // Any thread.
  bool enqueue(command& c);
  void wake();
  void answer(job& j, http_response r);

  // The loop thread.
  const http_options& options_of(const job& j) const { return j.http ? *j.http : opts.http; }
  int epoll_timeout() const;
  void act(curl_socket_t fd, int flags);
  bool take_inbox();
  void admit(std::unique_ptr<job> j);
  void begin(std::unique_ptr<job> j);
  void complete(std::unique_ptr<job> j, http_response r);
  void settle(job& j, const http_response& r);
  void pump(const std::string& downstream);
  void refuse_waiting(const std::string& downstream, int64_t until);
  std::unique_ptr<job> take_waiting(uint64_t id);
  void count_waiting();
  void configure(CURL* e, const job& j);
  void collect_done();
  void expire();
  void drop(uint64_t id, http_response r);
  CURL* take_easy();
  void release(job& j);

  // libcurl's callbacks; they run on the loop thread, inside libcurl calls.
  static int on_socket(CURL* e, curl_socket_t s, int what, void* self, void* socketp);
  static int on_timer(CURLM* m, long timeout_ms, void* self);
  static curl_socket_t on_open(void* self, curlsocktype purpose, curl_sockaddr* address);
  static int on_close(void* self, curl_socket_t s);

  const options opts;
  std::string start_error;  // written by the constructor only

  std::mutex mutex;
  std::vector<command> inbox;  // under mutex
  bool stopping = false;       // under mutex; true: submit() answers at once
  std::atomic<uint64_t> next_id{1};
  std::atomic<int64_t> submitted{0}, completed{0}, failed{0}, timed_out{0}, cancelled{0};
  std::atomic<int64_t> sockets_opened{0}, sockets_open{0};
  std::atomic<int64_t> waiting_count{0};  ///< requests in `waiting`, after each pass of the loop

  int epoll_fd = -1;
  int wake_fd = -1;
  CURLM* multi = nullptr;
  std::unordered_map<uint64_t, std::unique_ptr<job>> active;
  std::vector<CURL*> idle;
  std::optional<steady::time_point> timer_due;  // libcurl's timer; none = no timeout
  std::set<std::pair<steady::time_point, uint64_t>> deadlines;  // of the jobs in `active` that have one
  std::string fatal;                            // set when libcurl itself fails
  bool draining = false;                        // shutdown(): start nothing more

  // The adaptive limits (admit()). The loop thread changes them; limits() reads
  // them from any thread, hence the lock (never held across libcurl or a callback).
  mutable std::mutex limits_mutex;
  downstream_limiter limiter{opts.limits};
  /// Tagged requests waiting for a slot, in order, per (downstream, function).
  std::map<std::pair<std::string, std::string>, std::deque<std::unique_ptr<job>>> waiting;
  std::thread thread;
};

}  // namespace klynaa::actors
