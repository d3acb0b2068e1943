// The harnesses of the fault-injection suite (faults_test.cpp,
// faults_kill_test.cpp, faults_poison_test.cpp): `klynaa run` or a broker and
// nodes wired to the reference Django, the environment every scenario shares,
// and the FIGURES line each prints (docs/reliability.md, "Fault-injection suite").
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "faults_support.hpp"

namespace klynaa::test::faults {

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

inline void print_figures(const std::string& scenario, clock_type::time_point t0, const figures& f,
                          const json& extra = json::object()) {
  auto j = json::parse(f.str());
  j["seconds"] = std::round(seconds_since(t0) * 10) / 10;
  for (auto& [k, v] : extra.items()) j[k] = v;
  std::cout << "FIGURES " << scenario << " " << j.dump() << std::endl;
}

/// Every Klynaa process of a scenario: Django at `django_port`, quick retries that
/// outlast the faults, a Django timeout of 1.5 s, a short node timeout, the
/// auto-release an hour away (the confirmation cancels it), no schedule misfires,
/// circuit breakers that reopen quickly.
inline std::map<std::string, std::string> base_env(int django_port) {
  return {{"DJANGO_API_URL", "http://127.0.0.1:" + std::to_string(django_port)},
          {"DJANGO_API_KEY", "test-key"},
          {"KLYNAA_RETRY_BASE_DELAY_MS", "100"},
          {"KLYNAA_RETRY_MAX_DELAY_MS", "1000"},
          {"KLYNAA_RETRY_MAX_ATTEMPTS", "40"},
          {"KLYNAA_DJANGO_TIMEOUT_MS", "1500"},
          {"KLYNAA_DJANGO_CONNECT_TIMEOUT_MS", "1000"},
          {"KLYNAA_ESCROW_HOLD_SECONDS", "3600"},
          {"KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "0"},
          {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"},
          {"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "1500"},
          {"KLYNAA_SHUTDOWN_GRACE_SECONDS", "5"},
          // Django's circuit breaker opens after 5 failures in a row: short, so
          // that the jobs resume soon after a fault ends.
          {"KLYNAA_CIRCUIT_BREAKER_OPEN_SECONDS", "1"},
          {"KLYNAA_CIRCUIT_BREAKER_MAX_OPEN_SECONDS", "2"}};
}

/// How often the scenarios ask a condition that reads the store or Django:
/// every 20 ms would load the machine.
constexpr std::chrono::milliseconds poll_every = 200ms;

inline std::vector<event> of_types(const burst& b, const std::set<std::string>& types) {
  std::vector<event> out;
  for (auto& e : b.events)
    if (types.count(e.type)) out.push_back(e);
  return out;
}
inline const std::set<std::string> before_confirmation = {"pickup.accepted", "pickup.delivered", "worker.location"};
inline const std::set<std::string> confirmation = {"pickup.confirmed"};

/// Waits until the notifications of every accepted and delivered event of `b` are done.
inline bool wait_notified(const std::string& data_dir, const burst& b, std::chrono::milliseconds timeout) {
  return wait_for([&] {
    store_reader st(data_dir + "/broker.db");
    std::map<std::string, int> done;
    for (auto& [id, j] : st.jobs())
      if (j.function == "sendPickupNotification" && j.state == 3) ++done[j.request_id];
    for (auto& e : b.events)
      if ((e.type == "pickup.accepted" || e.type == "pickup.delivered") && done[e.id] != 1) return false;
    return true;
  }, timeout, poll_every);
}

/// `klynaa run` and the reference Django.
struct run_harness {
  // Django first, on a port it binds itself (a port picked in advance may be
  // taken meanwhile); it publishes no events here (pickups made with publish: false).
  std::unique_ptr<django_app> django = std::make_unique<django_app>();
  std::unique_ptr<klynaa_server> klynaa;

  explicit run_harness(const std::map<std::string, std::string>& overrides = {}) {
    auto env = base_env(django->port());
    for (auto& [k, v] : overrides) env[k] = v;
    klynaa = std::make_unique<klynaa_server>("run", env);
  }
  void fault(const json& f) { django->post("/api/demo/faults/", f); }
  std::function<std::string()> ingress() {
    return [this] { return klynaa->ingress(); };
  }
  bool finished(const burst& b, std::chrono::milliseconds timeout = 45000ms) {
    bool ok = wait_all_finished(klynaa->data_dir(), b, timeout);
    if (!ok) {
      INFO(broker_stats(*klynaa).dump());
      INFO(klynaa->log().substr(klynaa->log().size() > 6000 ? klynaa->log().size() - 6000 : 0));
      CHECK(ok);
    }
    return ok;
  }
  figures check(const burst& b, bool exactly_once = true) {
    check_options o;
    o.exactly_once_pushes = exactly_once;
    o.outbox_dirs = {klynaa->data_dir()};
    o.logs = {klynaa->log()};
    return check_invariants(klynaa->data_dir(), b, *django, o);
  }
  int64_t retries_so_far() {
    auto s = broker_stats(*klynaa);
    int64_t n = 0;
    for (auto f : {"sendPickupNotification", "processEscrowRelease", "updateWorkerLocation"})
      n += outcome_count(s, f, "retry");
    return n;
  }
};

/// `klynaa broker` on a fixed cluster port (it survives a restart), nodes over
/// TCP, and the reference Django.
struct cluster_harness {
  std::unique_ptr<django_app> django = std::make_unique<django_app>();  // see run_harness
  std::string cluster_ep = "tcp://127.0.0.1:" + std::to_string(free_tcp_port());
  std::map<std::string, std::string> env;
  temp_dir dir;
  std::unique_ptr<klynaa_server> broker;
  std::map<std::string, std::unique_ptr<process>> nodes;

  explicit cluster_harness(const std::map<std::string, std::string>& overrides = {}) {
    env = base_env(django->port());
    for (auto& [k, v] : overrides) env[k] = v;
    broker = std::make_unique<klynaa_server>("broker", env, std::vector<std::string>{"--cluster", cluster_ep});
  }
  void add_node(const std::string& name) { nodes[name] = start_node(dir, name, cluster_ep, env); }
  bool nodes_registered(size_t n, std::chrono::milliseconds timeout = 30000ms) {
    return wait_for([&] { return broker_stats(*broker).value("nodes", json::array()).size() == n; }, timeout);
  }
  void fault(const json& f) { django->post("/api/demo/faults/", f); }
  std::function<std::string()> ingress() {
    return [this] { return broker->ingress(); };
  }
  bool finished(const burst& b, std::chrono::milliseconds timeout = 45000ms) {
    bool ok = wait_all_finished(broker->data_dir(), b, timeout);
    if (!ok) {
      INFO(broker_stats(*broker).dump());
      INFO(broker->log().substr(broker->log().size() > 6000 ? broker->log().size() - 6000 : 0));
      CHECK(ok);
    }
    return ok;
  }
  figures check(const burst& b, bool exactly_once) {
    check_options o;
    o.exactly_once_pushes = exactly_once;
    for (auto& [name, p] : nodes) {
      o.outbox_dirs.push_back(dir / name);
      o.logs.push_back(p->log());
    }
    o.logs.push_back(broker->log());
    return check_invariants(broker->data_dir(), b, *django, o);
  }
  /// SIGTERM to every node still running: exit 0; no sanitizer report in any node's log.
  void stop_nodes() {
    for (auto& [name, p] : nodes) stop_cleanly(*p, name);
  }
};

}  // namespace klynaa::test::faults
