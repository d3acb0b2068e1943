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
//
// The parts: this file runs the thread and takes the public calls;
// http_loop_limits.cpp holds the adaptive in-flight limits and
// http_loop_transfer.cpp the libcurl side of one request; http_loop_impl.hpp
// the state they share.
#include "actors/http_loop.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <system_error>

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "actors/http_loop_impl.hpp"

namespace klynaa::actors {
namespace {

using loop_detail::no_answer;

std::string errno_text(const char* call) {
  return std::string(call) + " failed: " + std::strerror(errno);
}

}  // namespace

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

// ---- http_loop ----

http_loop::http_loop(options o) : impl_(std::make_unique<impl>(std::move(o))) { impl_->start(); }

http_loop::http_loop() : http_loop(options{}) {}

http_loop::~http_loop() { impl_->stop(); }

uint64_t http_loop::submit(http_request req, callback cb, int64_t timeout_ms, limit_tag tag,
                           const http_options* http) {
  auto j = std::make_unique<loop_detail::job>();
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
  loop_detail::command c{std::move(j), 0};
  // Refused: the loop is not running; answer here, on the caller's thread.
  if (!impl_->enqueue(c)) impl_->answer(*c.submitted, no_answer(stopped_error));
  return id;
}

void http_loop::cancel(uint64_t id) {
  loop_detail::command c{nullptr, id};
  impl_->enqueue(c);  // refused: nothing is left to cancel
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

const std::string& http_loop::start_error() const { return impl_->start_error; }

const http_loop::options& http_loop::config() const { return impl_->opts; }

}  // namespace klynaa::actors
