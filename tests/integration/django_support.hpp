// The reference Django app (examples/django) as a real process for integration
// tests: starts on an ephemeral 127.0.0.1 port with its own database, and a tiny
// JSON-over-HTTP client for its API and its /api/demo/ test hooks.
#pragma once

#include <httplib.h>

#include <regex>

#include "support.hpp"
#include "tests/support/ports.hpp"

namespace klynaa::test {

class django_app {
 public:
  /// `ingress`: where its events go (KLYNAA_INGRESS); may be set later by restart().
  explicit django_app(std::string ingress = "tcp://127.0.0.1:9", int port = 0)
      : ingress_(std::move(ingress)) {
    start(port);
  }

  void start(int port = 0) {
    const std::string log = dir_ / ("django-" + std::to_string(++starts_) + ".log");
    std::vector<std::string> args = {"/usr/bin/python3",
                                     std::string(KLYNAA_SOURCE_DIR) + "/examples/django/serve.py",
                                     "127.0.0.1:" + std::to_string(port), "--seed", "--quiet"};
    proc_ = std::make_unique<process>(args,
                                      std::map<std::string, std::string>{
                                          {"DJANGO_API_KEY", "test-key"},
                                          {"KLYNAA_INGRESS", ingress_},
                                          {"KLYNAA_INGRESS_TIMEOUT_S", "5"},
                                          {"KLYNAA_DEMO_DB", dir_.path}},
                                      log);
    std::smatch m;
    bool up = wait_for([&] {
      auto text = read_file(log);
      static const std::regex ready("READY http://127\\.0\\.0\\.1:([0-9]+)");
      if (!std::regex_search(text, m, ready)) return false;
      port_ = std::stoi(m[1]);
      return true;
    }, 30000ms);
    INFO(read_file(log));
    REQUIRE(up);
  }

  void stop() {
    if (proc_ && proc_->running()) {
      proc_->kill(SIGTERM);
      if (!proc_->wait(10000ms)) proc_->kill(SIGKILL);
    }
  }

  /// Restarts on the same port and database, sending events to `ingress`.
  void restart(const std::string& ingress) {
    stop();
    ingress_ = ingress;
    start(port_);
  }

  ~django_app() { stop(); }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

  json get(const std::string& path) {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(30, 0);
    auto r = c.Get(path.c_str(), {{"Authorization", "Api-Key test-key"}});
    REQUIRE(r);
    return json::parse(r->body, nullptr, false);
  }
  json post(const std::string& path, const json& body) {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(30, 0);
    auto r = c.Post(path.c_str(), {{"Authorization", "Api-Key test-key"}}, body.dump(),
                    "application/json");
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status < 300);
    return json::parse(r->body, nullptr, false);
  }
  json state() { return get("/api/demo/state/"); }

 private:
  temp_dir dir_;
  std::string ingress_;
  int port_ = 0;
  int starts_ = 0;
  std::unique_ptr<process> proc_;
};

/// The outbox of the `log` provider: one JSON object per line.
inline std::vector<json> outbox(const std::string& data_dir) {
  std::vector<json> out;
  std::stringstream ss(read_file(data_dir + "/outbox.jsonl"));
  std::string line;
  while (std::getline(ss, line))
    if (!line.empty()) out.push_back(json::parse(line, nullptr, false));
  return out;
}

/// The broker's /stats.
inline json broker_stats(const klynaa_server& srv) {
  auto addr = srv.endpoints()["admin"].get<std::string>();
  auto colon = addr.rfind(':');
  httplib::Client c(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
  auto r = c.Get("/stats");
  if (!r) return json::object();
  return json::parse(r->body, nullptr, false);
}

/// Jobs of `function` not finished yet (ready, running, retry_wait).
inline int64_t unfinished(const json& stats, const std::string& function) {
  if (!stats.contains("functions") || !stats["functions"].contains(function)) return 0;
  auto& f = stats["functions"][function];
  return f.value("ready", int64_t{0}) + f.value("running", int64_t{0}) + f.value("retry_wait", int64_t{0});
}

inline int64_t outcome_count(const json& stats, const std::string& function, const std::string& outcome) {
  if (!stats.contains("functions") || !stats["functions"].contains(function)) return 0;
  auto& f = stats["functions"][function];
  if (!f.contains("outcomes")) return 0;
  return f["outcomes"].value(outcome, int64_t{0});
}

/// `klynaa run` and the reference Django app wired to each other, with quick retries.
struct cluster_under_test {
  int django_port = free_tcp_port();
  std::unique_ptr<klynaa_server> klynaa;
  std::unique_ptr<django_app> django;

  cluster_under_test() : cluster_under_test(std::map<std::string, std::string>{}) {}
  explicit cluster_under_test(std::map<std::string, std::string> env, std::vector<std::string> extra = {}) {
    env["DJANGO_API_URL"] = "http://127.0.0.1:" + std::to_string(django_port);
    env["DJANGO_API_KEY"] = "test-key";
    env.emplace("KLYNAA_RETRY_BASE_DELAY_MS", "100");
    env.emplace("KLYNAA_RETRY_MAX_DELAY_MS", "1000");
    env.emplace("KLYNAA_RETRY_MAX_ATTEMPTS", "40");  // outlasts a Django restart
    env.emplace("KLYNAA_DJANGO_TIMEOUT_MS", "3000");
    klynaa = std::make_unique<klynaa_server>("run", env, std::move(extra));
    django = std::make_unique<django_app>(klynaa->ingress(), django_port);
  }

  json stats() { return broker_stats(*klynaa); }

  bool all_done(const std::vector<std::string>& functions, std::chrono::milliseconds timeout = 30000ms) {
    return wait_for([&] {
      auto s = stats();
      if (!s.contains("functions")) return false;
      for (auto& f : functions)
        if (unfinished(s, f) != 0) return false;
      return true;
    }, timeout);
  }
};

}  // namespace klynaa::test
