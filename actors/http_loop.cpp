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
  int epoll_timeout() const;
  void act(curl_socket_t fd, int flags);
  bool take_inbox();
  void begin(std::unique_ptr<job> j);
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

  int epoll_fd = -1;
  int wake_fd = -1;
  CURLM* multi = nullptr;
  std::unordered_map<uint64_t, std::unique_ptr<job>> active;
  std::vector<CURL*> idle;
  std::optional<steady::time_point> timer_due;  // libcurl's timer; none = no timeout
  std::set<std::pair<steady::time_point, uint64_t>> deadlines;  // of the jobs in `active` that have one
  std::string fatal;                            // set when libcurl itself fails
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
      begin(std::move(c.submitted));
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
  while (!active.empty()) drop(active.begin()->first, no_answer(error));
  for (command& c : rest) {
    if (c.submitted) answer(*c.submitted, no_answer(error));
  }
}

// ---- one request ----

void http_loop::impl::begin(std::unique_ptr<job> j) {
  CURL* e = take_easy();
  if (e == nullptr) return answer(*j, no_answer(detail::no_handle_error));
  j->easy = e;
  j->t = detail::transfer{&j->response, opts.http.max_body_bytes};
  j->headers = detail::prepare(e, opts.http, j->req.method, j->req.url, j->req.headers, j->req.body,
                               j->t, j->error);
  configure(e, *j);
  CURLMcode mc = curl_multi_add_handle(multi, e);  // sets libcurl's timer to start it
  if (mc != CURLM_OK) {
    release(*j);
    return answer(*j, no_answer(std::string("libcurl could not start the request: ") +
                                curl_multi_strerror(mc)));
  }
  int64_t timeout_ms = j->timeout_ms > 0 ? j->timeout_ms : opts.http.timeout_ms;
  if (timeout_ms > 0) {
    j->deadline = steady::now() + std::chrono::milliseconds(timeout_ms) + deadline_grace;
    deadlines.emplace(*j->deadline, j->id);
  }
  uint64_t id = j->id;
  active.emplace(id, std::move(j));
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
    detail::finish(e, rc, opts.http, j->t, j->error, j->response);
    release(*j);
    answer(*j, std::move(j->response));
  }
}

/// Stops request `id`'s transfer, if it has one, and answers it with `r`.
/// libcurl closes its connection unless it can still be reused; an answer that
/// arrives later has nowhere to go.
void http_loop::impl::drop(uint64_t id, http_response r) {
  auto it = active.find(id);
  if (it == active.end()) return;  // answered already (or never started)
  std::unique_ptr<job> j = std::move(it->second);
  active.erase(it);
  release(*j);
  answer(*j, std::move(r));
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
    int64_t ms = j.timeout_ms > 0 ? j.timeout_ms : opts.http.timeout_ms;
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

uint64_t http_loop::submit(http_request req, callback cb, int64_t timeout_ms) {
  auto j = std::make_unique<job>();
  j->id = impl_->next_id++;
  j->req = std::move(req);
  j->cb = std::move(cb);
  j->timeout_ms = timeout_ms;
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

http_loop::stats http_loop::snapshot() const {
  stats s;
  s.submitted = impl_->submitted.load();
  s.completed = impl_->completed.load();
  s.in_flight = s.submitted - s.completed;
  s.failed = impl_->failed.load();
  s.timed_out = impl_->timed_out.load();
  s.cancelled = impl_->cancelled.load();
  s.connections_opened = impl_->sockets_opened.load();
  s.connections_open = impl_->sockets_open.load();
  return s;
}

const std::string& http_loop::start_error() const { return impl_->start_error; }

const http_loop::options& http_loop::config() const { return impl_->opts; }

bool http_loop::h2c_supported() {
  static const bool supported = [] {
    detail::global_init_once();
    const curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
    return v->version_num >= 0x080000 && (v->features & CURL_VERSION_HTTP2) != 0;
  }();
  return supported;
}

}  // namespace klynaa::actors
