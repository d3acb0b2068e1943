// A scriptable HTTP server for the actor tests: cpp-httplib bound to 127.0.0.1 on
// an ephemeral port, serving canned answers per "METHOD path" and recording every
// request it receives. Plays Django (contract §4) or a push webhook (§6).
//
//   fake_server django;
//   django.on("GET", "/api/users/admins/", {200, R"({"admins": []})"});
//   ... django.url() ... django.requests() ...
//
// Unscripted requests get 404 {"detail": "Not found."}. Thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

namespace klynaa::test {

struct recorded_request {
  std::string method;
  std::string path;    ///< decoded by httplib
  std::string target;  ///< as sent, still percent-encoded, query included
  std::string body;
  std::multimap<std::string, std::string, httplib::detail::ci> headers;

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct canned {
  int status = 200;
  std::string body;
  std::map<std::string, std::string> headers;  ///< extra response headers
  int delay_ms = 0;                            ///< sleep before answering

  canned(int status_ = 200, std::string body_ = "", std::map<std::string, std::string> headers_ = {},
         int delay_ms_ = 0)
      : status(status_), body(std::move(body_)), headers(std::move(headers_)), delay_ms(delay_ms_) {}
};

class fake_server {
 public:
  using handler = std::function<canned(const recorded_request&)>;

  fake_server() {
    server_.set_keep_alive_timeout(1);
    // Catch-all routes per method (a pre-routing handler would run before
    // httplib reads the request body).
    auto all = [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); };
    server_.Get(".*", all);
    server_.Post(".*", all);
    server_.Put(".*", all);
    server_.Patch(".*", all);
    server_.Delete(".*", all);
    port_ = server_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("fake_server: cannot bind 127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!server_.is_running()) {
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error("fake_server: did not start");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }

  ~fake_server() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  fake_server(const fake_server&) = delete;
  fake_server& operator=(const fake_server&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  /// Answers every `method` `path` (decoded, without query) with `c`.
  void on(const std::string& method, const std::string& path, canned c) {
    on(method, path, [c](const recorded_request&) { return c; });
  }

  /// Answers every `method` `path` with what `h` returns.
  void on(const std::string& method, const std::string& path, handler h) {
    std::lock_guard<std::mutex> lock(mutex_);
    routes_[method + " " + path] = std::move(h);
  }

  /// Answers the next calls with `answers`, one each, then repeats the last.
  void on_sequence(const std::string& method, const std::string& path, std::vector<canned> answers) {
    auto state = std::make_shared<std::pair<std::mutex, size_t>>();
    on(method, path, [answers, state](const recorded_request&) {
      std::lock_guard<std::mutex> lock(state->first);
      size_t i = std::min(state->second++, answers.size() - 1);
      return answers[i];
    });
  }

  std::vector<recorded_request> requests() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return log_;
  }

  std::vector<recorded_request> requests_to(const std::string& method, const std::string& path) const {
    std::vector<recorded_request> out;
    for (auto& r : requests())
      if (r.method == method && r.path == path) out.push_back(r);
    return out;
  }

 private:
  void serve(const httplib::Request& req, httplib::Response& res) {
    recorded_request r;
    r.method = req.method;
    r.path = req.path;
    r.target = req.target;
    r.body = req.body;
    for (const auto& [k, v] : req.headers) r.headers.emplace(k, v);
    handler h;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      log_.push_back(r);
      auto it = routes_.find(req.method + " " + req.path);
      if (it != routes_.end()) h = it->second;
    }
    canned c = h ? h(r) : canned{404, R"({"detail": "Not found."})"};
    if (c.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(c.delay_ms));
    res.status = c.status;
    for (const auto& [k, v] : c.headers) res.set_header(k.c_str(), v.c_str());
    if (!c.body.empty()) res.set_content(c.body, "application/json");
  }

  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  mutable std::mutex mutex_;
  std::map<std::string, handler> routes_;
  std::vector<recorded_request> log_;
};

/// A port on 127.0.0.1 with nothing listening: bound by the kernel's choice,
/// then released, so a connect to it is refused.
inline int closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("closed_port: cannot bind 127.0.0.1");
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace klynaa::test
