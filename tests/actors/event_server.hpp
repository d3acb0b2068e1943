// A one-thread HTTP/1.1 server on 127.0.0.1 for http_loop's tests
// (http_loop_test.cpp). Unlike fake_server (cpp-httplib: one of 8 pool threads
// per connection), it holds hundreds of connections at once, and it misbehaves
// on request. The request's path says what it does:
//
//   /delay/MS    200 after MS milliseconds
//   /gate        200 once gate_size /gate requests wait at once (all together),
//                or after 10 s
//   /never       reads the request and never answers (the connection stays open)
//   /close-mid   announces 100 bytes of body, sends 10, closes the connection
//   /trickle     announces 1000 bytes of body, sends one every 50 ms
//   anything     200 at once
//
// A 200's body is the path; the header X-Klynaa-Path repeats it. Connections stay
// open between requests (HTTP/1.1 keep-alive) until the client closes them.
// Requests are GETs without a body. Counts connections and requests; the
// counters are thread-safe.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <list>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace klynaa::test {

class event_server {
 public:
  using clock = std::chrono::steady_clock;

  explicit event_server(int gate_size = 0) : gate_size_(gate_size) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 1024) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 || ::pipe2(stop_, O_CLOEXEC) != 0)
      throw std::runtime_error("event_server: cannot listen on 127.0.0.1");
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }

  ~event_server() {
    char byte = 0;
    if (::write(stop_[1], &byte, 1) != 1) std::terminate();
    thread_.join();
    for (auto& c : conns_) ::close(c.fd);
    ::close(listen_fd_);
    ::close(stop_[0]);
    ::close(stop_[1]);
  }

  event_server(const event_server&) = delete;
  event_server& operator=(const event_server&) = delete;

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_; }    ///< accepted so far
  int requests() const { return requests_; }          ///< read so far
  int answered() const { return answered_; }          ///< answers begun
  int max_waiting() const { return max_waiting_; }    ///< most requests read and not answered at once

 private:
  enum class state { reading, waiting, silent, trickling, closed };
  struct conn {
    int fd = -1;
    std::string in;
    state st = state::reading;
    std::string path;
    clock::time_point due;
    int trickled = 0;
  };

  void run() {
    while (true) {
      std::vector<pollfd> fds{{stop_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      for (auto& c : conns_) fds.push_back({c.fd, POLLIN, 0});
      ::poll(fds.data(), fds.size(), poll_timeout());
      if (fds[0].revents != 0) return;
      if (fds[1].revents != 0) accept_all();
      size_t i = 2;
      for (auto& c : conns_) {
        if (i < fds.size() && fds[i].fd == c.fd && fds[i].revents != 0) read_from(c);
        ++i;
      }
      release_gate();
      auto now = clock::now();
      for (auto& c : conns_)
        if ((c.st == state::waiting || c.st == state::trickling) && c.due <= now) on_due(c);
      conns_.remove_if([](const conn& c) {
        if (c.st == state::closed) ::close(c.fd);
        return c.st == state::closed;
      });
    }
  }

  int poll_timeout() const {
    auto next = clock::time_point::max();
    for (auto& c : conns_)
      if (c.st == state::waiting || c.st == state::trickling) next = std::min(next, c.due);
    if (next == clock::time_point::max()) return -1;
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(next - clock::now()).count();
    return static_cast<int>(std::max<int64_t>(0, ms));
  }

  void accept_all() {
    while (true) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      ++connections_;
      conns_.emplace_back();
      conns_.back().fd = fd;
    }
  }

  void read_from(conn& c) {
    char buf[4096];
    ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n <= 0) {
      if (c.st == state::waiting || c.st == state::silent) --waiting_;
      c.st = state::closed;  // the client went away: its answer is dropped
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    auto end = c.in.find("\r\n\r\n");
    if (c.st != state::reading || end == std::string::npos) return;
    auto sp1 = c.in.find(' '), sp2 = c.in.find(' ', sp1 + 1);
    c.path = c.in.substr(sp1 + 1, sp2 - sp1 - 1);
    c.in.erase(0, end + 4);
    ++requests_;
    c.st = state::waiting;
    max_waiting_ = std::max(max_waiting_.load(), ++waiting_);
    c.due = clock::now();
    if (c.path.rfind("/delay/", 0) == 0) c.due += std::chrono::milliseconds(std::stoi(c.path.substr(7)));
    if (c.path == "/gate") c.due += std::chrono::seconds(10);
    if (c.path == "/never") c.st = state::silent;
  }

  void release_gate() {
    int at_gate = 0;
    for (auto& c : conns_) at_gate += c.st == state::waiting && c.path == "/gate";
    if (gate_size_ <= 0 || at_gate < gate_size_) return;
    for (auto& c : conns_)
      if (c.st == state::waiting && c.path == "/gate") c.due = clock::now();
  }

  void on_due(conn& c) {
    if (c.st == state::trickling) {
      if (!put(c, "x") || ++c.trickled == 1000) c.st = state::closed;
      c.due = clock::now() + std::chrono::milliseconds(50);
      return;
    }
    --waiting_;
    ++answered_;
    if (c.path == "/close-mid") {
      put(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
      c.st = state::closed;
    } else if (c.path == "/trickle") {
      put(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
      c.st = state::trickling;
      c.due = clock::now() + std::chrono::milliseconds(50);
    } else {
      put(c, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(c.path.size()) +
                 "\r\nX-Klynaa-Path: " + c.path + "\r\n\r\n" + c.path);
      c.st = state::reading;
    }
  }

  // Answers are small: a blocking-free send fits them in the socket's buffer.
  static bool put(const conn& c, const std::string& data) {
    return ::send(c.fd, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
  }

  const int gate_size_;
  int listen_fd_ = -1;
  int stop_[2] = {-1, -1};
  int port_ = 0;
  std::list<conn> conns_;  // the server thread's
  int waiting_ = 0;        // the server thread's
  std::atomic<int> connections_{0}, requests_{0}, answered_{0}, max_waiting_{0};
  std::thread thread_;
};

}  // namespace klynaa::test
