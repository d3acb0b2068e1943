// A scriptable HTTP server for the actor tests: cpp-httplib bound to 127.0.0.1 on
// an ephemeral port, serving canned answers per "METHOD path" and recording every
// request it receives. Plays Django (docs/events-and-functions.md, "The Django
// API") or a push webhook ("Push providers" there).
//
//   fake_server django;
//   django.on("GET", "/api/users/admins/", {200, R"({"admins": []})"});
//   ... django.url() ... django.requests() ...
//
// Unscripted requests get 404 {"detail": "Not found."}. Thread-safe.
//
// For clients that send concurrently, it also counts requests in flight (being
// handled at the same moment) and the TCP connections that carried them, and can
// hold requests until a number of them are in flight at once (hold()). httplib
// serves each connection on one of its 8 (or more) pool threads, so keep the
// number of connections a test expects at once below 8.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

#include "tests/support/ports.hpp"  // closed_port(): where no server is

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

  /// `keep_alive_seconds`: how long an idle connection stays open. Tests of
  /// connection reuse raise it, so that a slow machine cannot make the server
  /// close a connection between two batches.
  explicit fake_server(int keep_alive_seconds = 1) {
    server_.set_keep_alive_timeout(keep_alive_seconds);
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

  /// Holds every `method` `path` request until `n` of them are in flight at
  /// once, then answers them all; later requests are not held. A client that
  /// sends one at a time never gets there: each of its requests waits
  /// `max_wait`, and max_in_flight() stays at 1.
  void hold(const std::string& method, const std::string& path, int n,
            std::chrono::milliseconds max_wait = std::chrono::seconds(5)) {
    std::lock_guard<std::mutex> lock(mutex_);
    gates_[method + " " + path] = gate{n, max_wait, false};
  }

  /// The most `method` `path` requests that were in flight at once.
  int max_in_flight(const std::string& method, const std::string& path) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = max_in_flight_.find(method + " " + path);
    return it == max_in_flight_.end() ? 0 : it->second;
  }

  /// How many TCP connections carried the requests so far (told apart by the
  /// client's address and port).
  size_t connections() const { return peers(requests()); }

  /// How many TCP connections carried the `method` `path` requests so far.
  size_t connections(const std::string& method, const std::string& path) const {
    return peers(requests_to(method, path));
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
    const std::string key = req.method + " " + req.path;
    handler h;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      log_.push_back(r);
      auto it = routes_.find(key);
      if (it != routes_.end()) h = it->second;
      int now = ++in_flight_[key];
      max_in_flight_[key] = std::max(max_in_flight_[key], now);
      in_flight_changed_.notify_all();
      wait_at_gate(lock, key);
    }
    // Out of flight once answered, whichever way this function is left.
    struct landing {
      fake_server* self;
      const std::string& key;
      ~landing() {
        std::lock_guard<std::mutex> lock(self->mutex_);
        --self->in_flight_[key];
      }
    } landed{this, key};
    canned c = h ? h(r) : canned{404, R"({"detail": "Not found."})"};
    if (c.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(c.delay_ms));
    res.status = c.status;
    for (const auto& [k, v] : c.headers) res.set_header(k.c_str(), v.c_str());
    if (!c.body.empty()) res.set_content(c.body, "application/json");
  }

  static size_t peers(const std::vector<recorded_request>& reqs) {
    std::set<std::string> out;
    for (const auto& r : reqs) out.insert(r.header("REMOTE_ADDR") + ":" + r.header("REMOTE_PORT"));
    return out.size();
  }

  struct gate {
    int n = 0;
    std::chrono::milliseconds max_wait{0};
    bool open = false;  // n were in flight once: hold nothing any more
  };

  // Called with mutex_ held by `lock`.
  void wait_at_gate(std::unique_lock<std::mutex>& lock, const std::string& key) {
    auto g = gates_.find(key);
    if (g == gates_.end()) return;
    auto deadline = std::chrono::steady_clock::now() + g->second.max_wait;
    in_flight_changed_.wait_until(lock, deadline, [&] {
      auto& gt = gates_[key];
      if (in_flight_[key] >= gt.n) gt.open = true;
      return gt.open;
    });
  }

  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  mutable std::mutex mutex_;
  std::map<std::string, handler> routes_;
  std::vector<recorded_request> log_;
  std::map<std::string, gate> gates_;
  std::map<std::string, int> in_flight_;
  std::map<std::string, int> max_in_flight_;
  std::condition_variable in_flight_changed_;
};

}  // namespace klynaa::test
