// http_loop (http_loop.hpp): one thread, one libcurl multi handle, one epoll.
//
// The loop thread sleeps in epoll_wait on three kinds of event: the sockets
// libcurl asks it to watch (on_socket, CURLMOPT_SOCKETFUNCTION), libcurl's one
// timer (on_timer, CURLMOPT_TIMERFUNCTION: its deadline becomes epoll_wait's
// timeout), and an eventfd that other threads write after putting a command
// (submit or cancel) in the inbox. Each turn hands the socket events, then an
// expired timer, to curl_multi_socket_action, reads the finished transfers with
// curl_multi_info_read and runs their callbacks, then takes the inbox. libcurl's
// callbacks only record what to watch: curl_multi_socket_action is never called
// from inside them (libcurl forbids it).
//
// Ownership: a request is a `job`. It sits in the inbox until the loop takes it,
// then in `active` (by id) while libcurl transfers it on an easy handle, and is
// destroyed right after its callback returns. The multi handle, the easy handles,
// `active`, `idle` and `timer_due` belong to the loop thread (and to the
// constructor before it starts and the destructor after it ends); other threads
// touch only the inbox and `stopping`, under `mutex`, and the atomic counters.
// `mutex` is the only lock; it is never held while calling libcurl or a callback.
#include "actors/http_loop.hpp"

#include <algorithm>
#include <array>
#include <deque>
#include <map>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include <pthread.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/http_curl.hpp"

namespace klynaa::actors {
namespace {

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

http_response no_answer(std::string error) {
  http_response r;
  r.error = std::move(error);
  return r;
}

bool is_https(const std::string& url) {
  return url.size() >= 8 && strncasecmp(url.c_str(), "https://", 8) == 0;
}

std::string errno_text(const char* call) {
  return std::string(call) + " failed: " + std::strerror(errno);
}

int64_t wall_now_ms() {  // Retry-After may be an HTTP date
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now().time_since_epoch()).count();
}

/// The answer of a tagged request refused because its downstream asked to wait
/// (Retry-After): classify() makes it the deferred outcome "circuit_open".
http_response deferred(const std::string& downstream, int64_t left_ms) {
  http_response r = no_answer(downstream + " asked to wait (Retry-After): " + std::to_string(left_ms) +
                              " ms left; not sent");
  r.circuit_open_ms = std::max<int64_t>(left_ms, 0);
  return r;
}

/// How an answer counts for the limiter (actors/limiter.hpp).
call_outcome outcome_of(const http_response& r) {
  if (r.status == 0) {
    if (r.error == http_loop::cancelled_error) return call_outcome::cancelled;
    return r.timed_out ? call_outcome::timeout : call_outcome::failed;
  }
  if (r.status == 429 || r.status == 503) return call_outcome::overloaded;
  if (r.status == 504) return call_outcome::timeout;
  if (r.status >= 500) return call_outcome::failed;
  return call_outcome::ok;
}

}  // namespace

struct http_loop::impl {
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

// ---- start and stop ----

void http_loop::impl::start() {
  detail::global_init_once();
  auto fail = [this](std::string why) {
    start_error = std::move(why);
    stopping = true;  // no thread yet: nobody else reads it
  };
  epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) return fail(errno_text("epoll_create1"));
  wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) return fail(errno_text("eventfd"));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd;
  if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev) != 0) return fail(errno_text("epoll_ctl"));
  multi = curl_multi_init();
  if (multi == nullptr) return fail(detail::no_handle_error);
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &impl::on_socket);
  curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &impl::on_timer);
  curl_multi_setopt(multi, CURLMOPT_TIMERDATA, this);
  // HTTP/2 streams of many requests share one connection (with CURLOPT_PIPEWAIT
  // on each request, see configure()).
  curl_multi_setopt(multi, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
  curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, static_cast<long>(std::max(0, opts.max_host_connections)));
  curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, static_cast<long>(std::max(0, opts.max_total_connections)));
  try {
    thread = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    fail(std::string("the http loop's thread could not start: ") + e.what());
  }
}

void http_loop::impl::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    stopping = true;
  }
  if (thread.joinable()) {
    wake();
    thread.join();
  }
}

http_loop::impl::~impl() {
  // The thread has ended and `active` is empty: no easy handle is attached.
  if (multi != nullptr) curl_multi_cleanup(multi);  // closes the cached connections (on_close)
  for (CURL* e : idle) curl_easy_cleanup(e);
  if (wake_fd >= 0) ::close(wake_fd);
  if (epoll_fd >= 0) ::close(epoll_fd);
}

// ---- the loop ----

void http_loop::impl::run() {
  pthread_setname_np(pthread_self(), "klynaa-http");
  std::array<epoll_event, 256> events;
  while (fatal.empty()) {
    int n = ::epoll_wait(epoll_fd, events.data(), static_cast<int>(events.size()), epoll_timeout());
    if (n < 0) {
      if (errno == EINTR) continue;
      fatal = errno_text("epoll_wait");
      break;
    }
    bool woken = false;
    for (int i = 0; i < n; ++i) {
      const epoll_event& ev = events[static_cast<size_t>(i)];
      if (ev.data.fd == wake_fd) {
        woken = true;
        continue;
      }
      int flags = ((ev.events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                  ((ev.events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                  ((ev.events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
      act(ev.data.fd, flags);
    }
    if (timer_due && steady::now() >= *timer_due) {
      timer_due.reset();  // before the call: libcurl may set the next one inside it
      act(CURL_SOCKET_TIMEOUT, 0);
    }
    collect_done();
    expire();
    if (woken && !take_inbox()) break;
    count_waiting();
  }
  shutdown(fatal.empty() ? std::string(cancelled_error) : "the http loop failed: " + fatal);
}

/// Milliseconds until libcurl's timer or the first deadline is due (rounded up,
/// so the loop does not spin just before it), or -1 without either.
int http_loop::impl::epoll_timeout() const {
  std::optional<steady::time_point> due = timer_due;
  if (!deadlines.empty() && (!due || deadlines.begin()->first < *due)) due = deadlines.begin()->first;
  if (!due) return -1;
  auto left = *due - steady::now();
  if (left <= steady::duration::zero()) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

void http_loop::impl::act(curl_socket_t fd, int flags) {
  int running = 0;
  CURLMcode mc = curl_multi_socket_action(multi, fd, flags, &running);
  // CURLM_BAD_SOCKET: a socket libcurl closed earlier in this turn; harmless.
  if (mc != CURLM_OK && mc != CURLM_BAD_SOCKET && fatal.empty()) fatal = curl_multi_strerror(mc);
}

/// Starts the submitted requests and cancels what was asked, in the order the
/// commands came. Returns false once the loop is stopping (shutdown() answers
/// what is left in the inbox).
bool http_loop::impl::take_inbox() {
  // Drain the eventfd before taking the inbox: a command queued after the swap
  // writes it again, so none is left behind until some later event.
  uint64_t wakes = 0;
  ssize_t got = ::read(wake_fd, &wakes, sizeof wakes);
  (void)got;  // EAGAIN: another turn drained it already
  std::vector<command> batch;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (stopping) return false;
    batch.swap(inbox);
  }
  for (command& c : batch) {
    if (c.submitted) {
      admit(std::move(c.submitted));
    } else {
      drop(c.cancel_id, no_answer(cancelled_error));
    }
  }
  return true;
}

/// Answers everything not answered yet with `error`, first the transfers, then
/// the inbox. From here on submit() answers at once, so nothing new arrives.
void http_loop::impl::shutdown(const std::string& error) {
  std::vector<command> rest;
  {
    std::lock_guard<std::mutex> lock(mutex);
    stopping = true;
    rest.swap(inbox);
  }
  draining = true;
  while (!active.empty()) drop(active.begin()->first, no_answer(error));
  decltype(waiting) left;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);  // limits() reads it from other threads
    left.swap(waiting);
  }
  for (auto& [key, queue] : left)
    for (auto& j : queue) answer(*j, no_answer(error));
  for (command& c : rest) {
    if (c.submitted) answer(*c.submitted, no_answer(error));
  }
}

// ---- one request ----

void http_loop::impl::begin(std::unique_ptr<job> j) {
  CURL* e = take_easy();
  if (e == nullptr) return complete(std::move(j), no_answer(detail::no_handle_error));  // frees its slot
  j->easy = e;
  const http_options& ho = options_of(*j);
  j->t = detail::transfer{&j->response, ho.max_body_bytes};
  j->headers = detail::prepare(e, ho, j->req.method, j->req.url, j->req.headers, j->req.body,
                               j->t, j->error);
  configure(e, *j);
  CURLMcode mc = curl_multi_add_handle(multi, e);  // sets libcurl's timer to start it
  if (mc != CURLM_OK) {
    release(*j);
    return complete(std::move(j), no_answer(std::string("libcurl could not start the request: ") +
                                            curl_multi_strerror(mc)));
  }
  int64_t timeout_ms = j->timeout_ms > 0 ? j->timeout_ms : ho.timeout_ms;
  if (timeout_ms > 0) {
    j->deadline = steady::now() + std::chrono::milliseconds(timeout_ms) + deadline_grace;
    deadlines.emplace(*j->deadline, j->id);
  }
  j->started = steady::now();
  uint64_t id = j->id;
  active.emplace(id, std::move(j));
}

/// Starts `j` now, or, when it is tagged, once its limit has a slot for it: it
/// waits in `waiting` meanwhile; refused at once while its downstream is
/// paused by a Retry-After.
void http_loop::impl::admit(std::unique_ptr<job> j) {
  if (j->tag.downstream.empty()) return begin(std::move(j));
  const int64_t now = now_ms();
  int64_t paused = 0;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);
    auto key = std::make_pair(j->tag.downstream, j->tag.function);
    auto w = waiting.find(key);
    const bool queued_before = w != waiting.end() && !w->second.empty();  // keep the order
    if (!queued_before && limiter.try_acquire(j->tag.downstream, j->tag.function, now)) {
      j->acquired = true;
    } else {
      paused = limiter.paused_until(j->tag.downstream);
      if (paused <= now) {
        waiting[key].push_back(std::move(j));
        return;
      }
    }
  }
  if (!j->acquired) return answer(*j, deferred(j->tag.downstream, paused - now));
  begin(std::move(j));
}

/// The limiter learns how `j` went; a Retry-After on 429/503 pauses its downstream.
void http_loop::impl::settle(job& j, const http_response& r) {
  if (!j.acquired) return;
  j.acquired = false;
  const int64_t now = now_ms();
  const auto latency_us =
      std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - j.started).count();
  const auto outcome = outcome_of(r);
  int64_t pause_until = 0;
  // A 429 (rate limited) asks the client to wait: the whole downstream pauses.
  // A 503 comes from one overloaded moment: the limit is cut, and only the job
  // that got it waits its Retry-After (its retry, docs/reliability.md); pausing
  // every call on each 503 would leave the downstream idle most of the time.
  if (outcome == call_outcome::overloaded && r.status == 429)
    if (auto ra = r.header("retry-after"))
      if (auto ms = parse_retry_after(*ra, wall_now_ms()); ms && *ms > 0)
        pause_until = now + std::min<int64_t>(*ms, 3600000);  // at most 1 h (docs/reliability.md)
  std::lock_guard<std::mutex> lock(limits_mutex);
  limiter.on_done(j.tag.downstream, j.tag.function, now, latency_us, outcome);
  if (pause_until > 0) limiter.pause(j.tag.downstream, pause_until);
}

/// Answers `j` with `r`, after the limiter has counted it; its slot may start
/// the next request waiting for that downstream.
void http_loop::impl::complete(std::unique_ptr<job> j, http_response r) {
  settle(*j, r);
  const std::string downstream = j->tag.downstream;
  answer(*j, std::move(r));
  j.reset();  // destroyed on this thread, right after its callback
  if (!downstream.empty()) pump(downstream);
}

/// Starts the waiting requests of `downstream` that its limits now allow, one
/// per function in turn so that no function waits behind another's queue;
/// while it is paused, answers them all as deferred instead.
void http_loop::impl::pump(const std::string& downstream) {
  if (draining) return;
  for (;;) {
    std::vector<std::unique_ptr<job>> ready;
    int64_t paused = 0;
    const int64_t now = now_ms();
    {
      std::lock_guard<std::mutex> lock(limits_mutex);
      paused = limiter.paused_until(downstream);
      if (paused <= now) {
        for (auto it = waiting.lower_bound({downstream, std::string{}});
             it != waiting.end() && it->first.first == downstream; ++it) {
          if (it->second.empty() || !limiter.try_acquire(downstream, it->first.second, now)) continue;
          it->second.front()->acquired = true;
          ready.push_back(std::move(it->second.front()));
          it->second.pop_front();
        }
      }
    }
    if (paused > now) return refuse_waiting(downstream, paused);
    if (ready.empty()) return;
    for (auto& j : ready) begin(std::move(j));
  }
}

/// Every request waiting for `downstream` gets the deferred answer: it is
/// paused until `until` (ms of the steady clock).
void http_loop::impl::refuse_waiting(const std::string& downstream, int64_t until) {
  std::vector<std::unique_ptr<job>> refused;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);
    for (auto it = waiting.lower_bound({downstream, std::string{}});
         it != waiting.end() && it->first.first == downstream; ++it) {
      for (auto& j : it->second) refused.push_back(std::move(j));
      it->second.clear();
    }
  }
  const int64_t now = now_ms();
  for (auto& j : refused) answer(*j, deferred(downstream, until - now));
}

/// Takes request `id` out of `waiting`, or returns nullptr.
std::unique_ptr<job> http_loop::impl::take_waiting(uint64_t id) {
  std::lock_guard<std::mutex> lock(limits_mutex);
  for (auto& [key, queue] : waiting)
    for (auto it = queue.begin(); it != queue.end(); ++it)
      if ((*it)->id == id) {
        auto j = std::move(*it);
        queue.erase(it);
        return j;
      }
  return nullptr;
}

/// What the loop adds to prepare()'s options.
void http_loop::impl::configure(CURL* e, const job& j) {
  // The id, not a pointer: a stale id finds nothing in `active`.
  curl_easy_setopt(e, CURLOPT_PRIVATE, reinterpret_cast<void*>(static_cast<uintptr_t>(j.id)));
  // When HTTP/2 is possible, wait for a connection that may multiplex rather
  // than open another (CURLOPT_PIPEWAIT). libcurl waits until it knows whether
  // the first connection to the host multiplexes: after the TLS handshake (ALPN),
  // at once with prior knowledge, but for HTTP/1.1 only once the first response
  // arrives. So cleartext HTTP/1.1 asks for HTTP/1.1 outright: a server that
  // never answers one request must not hold up the others.
  long version = CURL_HTTP_VERSION_1_1;
  if (is_https(j.req.url)) {
    version = CURL_HTTP_VERSION_2TLS;
  } else if (opts.http2_prior_knowledge && h2c_supported()) {
    version = CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
  }
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, version);
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, version == CURL_HTTP_VERSION_1_1 ? 0L : 1L);
  // A connection keeps the socket callbacks of the request that opened it.
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, &impl::on_open);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &impl::on_close);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, this);
  // Cancelling a transfer still resolving must not wait for its resolver thread
  // (libcurl >= 7.87): that wait would hold the whole loop.
  curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
  if (j.timeout_ms > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(j.timeout_ms));
}

void http_loop::impl::collect_done() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* e = msg->easy_handle;
    CURLcode rc = msg->data.result;  // read before release(): msg dies with the removal
    char* p = nullptr;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, &p);
    auto it = active.find(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
    if (it == active.end() || it->second->easy != e) continue;
    std::unique_ptr<job> j = std::move(it->second);
    active.erase(it);
    detail::finish(e, rc, options_of(*j), j->t, j->error, j->response);
    release(*j);
    http_response r = std::move(j->response);
    complete(std::move(j), std::move(r));
  }
}

/// Stops request `id`'s transfer, if it has one, and answers it with `r`.
/// libcurl closes its connection unless it can still be reused; an answer that
/// arrives later has nowhere to go.
void http_loop::impl::drop(uint64_t id, http_response r) {
  auto it = active.find(id);
  if (it == active.end()) {  // waiting for a slot, answered already, or never started
    if (auto w = take_waiting(id)) answer(*w, std::move(r));
    return;
  }
  std::unique_ptr<job> j = std::move(it->second);
  active.erase(it);
  release(*j);
  complete(std::move(j), std::move(r));
}

/// Answers the requests past their deadline. libcurl enforces CURLOPT_TIMEOUT_MS
/// itself, but not on a transfer still waiting for a connection (all
/// max_host_connections busy): that one times out only once a connection frees
/// up, however late. The deadline is the timeout plus deadline_grace, so that
/// libcurl's own timeout, with its error text, comes first when it can.
void http_loop::impl::expire() {
  auto now = steady::now();
  while (!deadlines.empty() && deadlines.begin()->first <= now) {
    auto it = active.find(deadlines.begin()->second);
    if (it == active.end()) {  // cannot happen: release() erases the deadline
      deadlines.erase(deadlines.begin());
      continue;
    }
    const job& j = *it->second;
    int64_t ms = j.timeout_ms > 0 ? j.timeout_ms : options_of(j).timeout_ms;
    http_response r = no_answer("Operation timed out after " + std::to_string(ms) +
                                " milliseconds, still waiting for a connection");
    r.timed_out = true;
    drop(j.id, std::move(r));  // release() erases the deadline
  }
}

CURL* http_loop::impl::take_easy() {
  if (idle.empty()) return curl_easy_init();
  CURL* e = idle.back();
  idle.pop_back();
  return e;
}

/// Detaches `j`'s easy handle (its connection goes to the cache or is closed)
/// and keeps it for the next request, up to max_idle_handles.
void http_loop::impl::release(job& j) {
  if (j.deadline) deadlines.erase({*j.deadline, j.id});
  curl_multi_remove_handle(multi, j.easy);
  curl_slist_free_all(j.headers);
  j.headers = nullptr;
  if (static_cast<int>(idle.size()) < opts.max_idle_handles) {
    idle.push_back(j.easy);
  } else {
    curl_easy_cleanup(j.easy);
  }
  j.easy = nullptr;
}

// ---- any thread ----

/// Runs `j`'s callback with `r`, counted first so that a callback sees itself
/// in snapshot(). An exception from the callback stops there.
void http_loop::impl::answer(job& j, http_response r) {
  ++completed;
  if (r.status == 0) ++failed;
  if (r.timed_out) ++timed_out;
  if (r.status == 0 && r.error == cancelled_error) ++cancelled;
  if (!j.cb) return;
  try {
    j.cb(std::move(r));
  } catch (...) {
    // The callback's own failure; the loop and the other requests go on.
  }
}

/// Moves `c` into the inbox and returns true, or returns false (and leaves `c`
/// alone) when the loop is stopping.
bool http_loop::impl::enqueue(command& c) {
  bool was_empty = false;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (stopping) return false;
    was_empty = inbox.empty();
    inbox.push_back(std::move(c));
  }
  // A non-empty inbox has a wake-up pending already (take_inbox() drains the
  // eventfd before it takes the inbox): one write per batch of commands.
  if (was_empty) wake();
  return true;
}

void http_loop::impl::wake() {
  uint64_t one = 1;
  ssize_t put = ::write(wake_fd, &one, sizeof one);
  (void)put;  // EAGAIN only when the counter is full: a wake-up is pending anyway
}

// ---- libcurl's callbacks ----

int http_loop::impl::on_socket(CURL*, curl_socket_t s, int what, void* self, void*) {
  int epoll_fd = static_cast<impl*>(self)->epoll_fd;
  if (what == CURL_POLL_REMOVE) {
    ::epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, nullptr);  // ENOENT/EBADF: gone already
    return 0;
  }
  epoll_event ev{};
  ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
  ev.data.fd = s;
  // MOD first: a socket libcurl already watches changes direction more often
  // than a new one appears.
  if (::epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT) {
    ::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev);
  }
  return 0;
}

int http_loop::impl::on_timer(CURLM*, long timeout_ms, void* self) {
  auto* loop = static_cast<impl*>(self);
  if (timeout_ms < 0) {
    loop->timer_due.reset();
  } else {
    loop->timer_due = steady::now() + std::chrono::milliseconds(timeout_ms);
  }
  return 0;
}

curl_socket_t http_loop::impl::on_open(void* self, curlsocktype, curl_sockaddr* address) {
  int fd = ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
  if (fd < 0) return CURL_SOCKET_BAD;
  auto* loop = static_cast<impl*>(self);
  ++loop->sockets_opened;
  ++loop->sockets_open;
  return fd;
}

int http_loop::impl::on_close(void* self, curl_socket_t s) {
  --static_cast<impl*>(self)->sockets_open;
  return ::close(s);
}

// ---- http_loop ----

http_loop::http_loop(options o) : impl_(std::make_unique<impl>(std::move(o))) { impl_->start(); }

http_loop::http_loop() : http_loop(options{}) {}

http_loop::~http_loop() { impl_->stop(); }

uint64_t http_loop::submit(http_request req, callback cb, int64_t timeout_ms, limit_tag tag,
                           const http_options* http) {
  auto j = std::make_unique<job>();
  j->id = impl_->next_id++;
  j->req = std::move(req);
  j->cb = std::move(cb);
  j->timeout_ms = timeout_ms;
  j->tag = std::move(tag);
  if (http != nullptr) {
    j->http = *http;
    j->http->loop.reset();  // the loop does not hold itself
  }
  uint64_t id = j->id;
  ++impl_->submitted;
  command c{std::move(j), 0};
  // Refused: the loop is not running; answer here, on the caller's thread.
  if (!impl_->enqueue(c)) impl_->answer(*c.submitted, no_answer(stopped_error));
  return id;
}

void http_loop::cancel(uint64_t id) {
  command c{nullptr, id};
  impl_->enqueue(c);  // refused: nothing is left to cancel
}

/// Publishes how many requests wait for their limit, for snapshot() (the
/// node's credit follows it: nodes/gateway.hpp, backed_up).
void http_loop::impl::count_waiting() {
  int64_t n = 0;
  {
    std::lock_guard<std::mutex> lock(limits_mutex);
    for (const auto& entry : waiting) n += static_cast<int64_t>(entry.second.size());
  }
  waiting_count.store(n, std::memory_order_relaxed);
}

http_loop::stats http_loop::snapshot() const {
  stats s;
  s.submitted = impl_->submitted.load();
  s.completed = impl_->completed.load();
  s.in_flight = s.submitted - s.completed;
  s.waiting = impl_->waiting_count.load(std::memory_order_relaxed);
  s.failed = impl_->failed.load();
  s.timed_out = impl_->timed_out.load();
  s.cancelled = impl_->cancelled.load();
  s.connections_opened = impl_->sockets_opened.load();
  s.connections_open = impl_->sockets_open.load();
  return s;
}

http_loop::limit_stats http_loop::limits() const {
  limit_stats out;
  std::lock_guard<std::mutex> lock(impl_->limits_mutex);
  out.limits = impl_->limiter.snapshot();
  for (const auto& [key, queue] : impl_->waiting)
    if (!queue.empty()) out.waiting[key.first] += static_cast<int64_t>(queue.size());
  return out;
}

const std::string& http_loop::start_error() const { return impl_->start_error; }

const http_loop::options& http_loop::config() const { return impl_->opts; }

nlohmann::json limits_json(const http_loop& loop) {
  const auto counters = loop.snapshot();
  const auto limits = loop.limits();
  const int64_t now = now_ms();
  nlohmann::json downstreams = nlohmann::json::object();
  for (const auto& f : limits.limits) {
    auto& d = downstreams[f.downstream];
    if (!d.contains("functions")) {
      auto w = limits.waiting.find(f.downstream);
      d = {{"in_flight", f.downstream_in_flight},
           {"max_in_flight", f.downstream_max_in_flight},
           {"waiting", w == limits.waiting.end() ? 0 : w->second},
           {"paused_ms", std::max<int64_t>(0, f.limit.paused_until_ms - now)},
           {"functions", nlohmann::json::object()}};
    }
    d["functions"][f.function] = {{"limit", f.limit.limit},
                                  {"in_flight", f.limit.in_flight},
                                  {"min_rtt_ms", static_cast<double>(f.limit.min_rtt_us) / 1000.0},
                                  {"latency_ms", static_cast<double>(f.limit.recent_latency_us) / 1000.0},
                                  {"overload_cuts", f.limit.overload_cuts},
                                  {"latency_cuts", f.limit.latency_cuts},
                                  {"floor_probes", f.limit.floor_probes},
                                  {"slow_start", f.limit.slow_start}};
  }
  return {{"in_flight", counters.in_flight},
          {"waiting", counters.waiting},
          {"connections_open", counters.connections_open},
          {"connections_opened", counters.connections_opened},
          {"downstreams", downstreams}};
}

bool http_loop::h2c_supported() {
  static const bool supported = [] {
    detail::global_init_once();
    const curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
    return v->version_num >= 0x080000 && (v->features & CURL_VERSION_HTTP2) != 0;
  }();
  return supported;
}

}  // namespace klynaa::actors
