// klynaa-upstream's loop and connections (upstream_server.hpp): start, the
// epoll loop, timers, accepting, reading, writing and closing, /_stats.
#include "bench/upstream_server.hpp"

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
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace klynaa::upstream {

server* the_server = nullptr;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "klynaa-upstream: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

}  // namespace

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
  set_h2_callbacks(h2_callbacks_);
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

}  // namespace klynaa::upstream
