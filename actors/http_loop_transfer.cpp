// http_loop's side of one request on libcurl (http_loop.hpp): begin() puts it on
// an easy handle of the multi handle, collect_done() reads the finished
// transfers, drop() and expire() stop one early, release() takes its handle back
// for the next request. And libcurl's callbacks: on_socket and on_timer only
// record what the loop must watch (libcurl forbids calling
// curl_multi_socket_action from inside them); on_open and on_close count the
// connections. Everything here runs on the loop thread.
#include <chrono>
#include <cstdint>
#include <string>

#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/http_loop_impl.hpp"

namespace klynaa::actors {
namespace {

using loop_detail::deadline_grace;
using loop_detail::no_answer;
using steady = loop_detail::steady;

bool is_https(const std::string& url) {
  return url.size() >= 8 && strncasecmp(url.c_str(), "https://", 8) == 0;
}

}  // namespace

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

bool http_loop::h2c_supported() {
  static const bool supported = [] {
    detail::global_init_once();
    const curl_version_info_data* v = curl_version_info(CURLVERSION_NOW);
    return v->version_num >= 0x080000 && (v->features & CURL_VERSION_HTTP2) != 0;
  }();
  return supported;
}

}  // namespace klynaa::actors
