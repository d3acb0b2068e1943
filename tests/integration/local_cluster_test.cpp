// A broker and three `klynaa node` processes started by deploy/local-cluster.sh
// (the script operators use), with the reference Django (issue 5): a burst of
// 1,000 mixed events, one node killed with SIGKILL in the middle of it. Every
// job completes, per-pickup order holds (read from the nodes' outboxes), work
// is spread over all nodes and no escrow is released twice.
#include <algorithm>
#include <set>

#include "django_support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

/// deploy/local-cluster.sh N DATA_DIR as a child process; its JSON line read.
class local_cluster {
 public:
  local_cluster(int n, const std::string& data_dir, std::map<std::string, std::string> env) {
    env["KLYNAA_BIN"] = KLYNAA_BINARY;
    env["LC_WAIT_SECONDS"] = "60";
    proc_ = std::make_unique<process>(
        std::vector<std::string>{"/bin/bash", std::string(KLYNAA_SOURCE_DIR) + "/deploy/local-cluster.sh",
                                 std::to_string(n), data_dir},
        env, dir_ / "local-cluster.log");
    bool up = wait_for([&] {
      std::stringstream ss(proc_->log());
      std::string line;
      while (std::getline(ss, line))
        if (line.rfind("{\"ingress\"", 0) == 0) {
          info_ = json::parse(line, nullptr, false);
          return info_.is_object();
        }
      return !proc_->running();
    }, 90000ms);
    INFO(proc_->log());
    REQUIRE(up);
    REQUIRE(info_.is_object());
  }

  ~local_cluster() {
    if (proc_->running()) {
      proc_->kill(SIGTERM);
      if (!proc_->wait(60000ms)) proc_->kill(SIGKILL);
    }
  }

  std::string ingress() const { return info_["ingress"]; }
  std::string admin() const { return info_["admin"]; }
  int node_pid(size_t i) const { return info_["node_pids"][i]; }

  /// The broker's /stats.
  json stats() const {
    auto addr = admin().substr(std::string("http://").size());
    auto colon = addr.rfind(':');
    httplib::Client c(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
    auto r = c.Get("/stats");
    if (!r) return json::object();
    return json::parse(r->body, nullptr, false);
  }

  /// SIGTERM and wait: the script stops the nodes and the broker.
  std::optional<int> stop() {
    proc_->kill(SIGTERM);
    return proc_->wait(90000ms);
  }
  std::string log() const { return proc_->log(); }

 private:
  temp_dir dir_;
  std::unique_ptr<process> proc_;
  json info_;
};

/// When each notification type reached each pickup: pickup id -> type -> times.
using push_times = std::map<int, std::map<std::string, std::vector<std::string>>>;

push_times read_outboxes(const std::string& data_dir, int nodes) {
  push_times out;
  for (int i = 1; i <= nodes; ++i)
    for (auto& l : outbox(data_dir + "/node-" + std::to_string(i))) {
      if (!l.is_object() || !l["data"].is_object()) continue;
      int id = l["data"].value("pickup_id", 0);
      if (id) out[id][l.value("notification_type", "")].push_back(l.value("ts", ""));
    }
  return out;
}

}  // namespace

TEST_CASE("local-cluster.sh with 3 nodes: 1,000 mixed events, a node killed with SIGKILL mid-burst",
          "[multinode][local-cluster]") {
  const int django_port = free_tcp_port();
  temp_dir dir;
  std::map<std::string, std::string> env = {
      {"DJANGO_API_URL", "http://127.0.0.1:" + std::to_string(django_port)},
      {"DJANGO_API_KEY", "test-key"},
      {"KLYNAA_RETRY_BASE_DELAY_MS", "100"},
      {"KLYNAA_RETRY_MAX_DELAY_MS", "500"},
      {"KLYNAA_RETRY_MAX_ATTEMPTS", "60"},
      {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"},
      {"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "1500"},
      {"KLYNAA_SHUTDOWN_GRACE_SECONDS", "5"},
      {"KLYNAA_SCHEDULER_MISFIRE_GRACE_SECONDS", "0"}};  // no catch-up of the 03:00/06:00 schedules
  local_cluster cluster(3, dir / "cluster", env);
  django_app django(cluster.ingress(), django_port);

  // 250 delivered pickups in Django (no events from Django itself).
  const int pickups_n = 250;
  std::vector<int> pickups;
  for (int i = 0; i < pickups_n; ++i) {
    auto p = django.post("/api/demo/pickups/", {{"customer_id", 101 + i % 3}, {"lat", 6.52}, {"lng", 3.38},
                                                {"price", 1000 + i}, {"status", "delivered"},
                                                {"worker_id", 201 + i % 5}, {"publish", false}});
    pickups.push_back(p["pickup"]["id"].get<int>());
  }

  // The burst: per pickup accepted, delivered, confirmed (750 events), and 250
  // worker locations, interleaved; node-1 is killed after 300 of them.
  zmq::context_t ctx;
  auto client = std::make_unique<raw_client>(ctx, cluster.ingress());
  int sent = 0;
  auto publish = [&](const std::string& id, const std::string& type, const json& data) {
    // As a client should: on no answer, send the same id again on a new socket
    // (a loaded machine can be slow); dedup makes it safe.
    std::optional<klynaa::protocol::reply> r;
    for (int attempt = 0; attempt < 3 && !r; ++attempt) {
      if (attempt > 0) client = std::make_unique<raw_client>(ctx, cluster.ingress());
      r = client->call(publish_frame(id, type, data));
    }
    if (!r) {
      auto log = read_file(dir / "cluster/broker.log");
      auto at = log.find("ERROR: AddressSanitizer");  // a report says most at its start
      if (at == std::string::npos) at = log.size() > 6000 ? log.size() - 6000 : 0;
      INFO("no answer to request " << sent + 1 << " (" << id << "); broker log:\n" << log.substr(at, 6000));
      REQUIRE(r);
    }
    REQUIRE((r->status == reply_status::accepted || r->status == reply_status::duplicate));
    if (++sent == 300) {
      // Kill node-1 in the middle of the burst, once it has done some of the work.
      wait_for([&] { return !outbox(dir / "cluster/node-1").empty(); }, 30000ms);
      ::kill(cluster.node_pid(0), SIGKILL);
    }
  };
  for (int step = 0; step < 3; ++step)
    for (int i = 0; i < pickups_n; ++i) {
      const int id = pickups[i];
      const int customer = 101 + i % 3, worker = 201 + i % 5;
      const auto sid = std::to_string(id);
      if (step == 0) publish("acc-" + sid, "pickup.accepted", {{"pickup_id", id}, {"customer_id", customer}, {"worker_id", worker}});
      if (step == 1) publish("del-" + sid, "pickup.delivered", {{"pickup_id", id}, {"customer_id", customer}, {"worker_id", worker}});
      if (step == 2) publish("conf-" + sid, "pickup.confirmed", {{"pickup_id", id}, {"customer_id", customer}});
      if (i % 3 == step)  // each worker.location once, spread over the burst
        publish("loc-" + sid, "worker.location", location(worker));
    }
  REQUIRE(sent == 1000);

  // Everything completes on the two nodes left, nothing dead.
  bool done = wait_for([&] {
    auto s = cluster.stats();
    if (!s.contains("functions")) return false;
    for (auto f : {"sendPickupNotification", "processEscrowRelease", "updateWorkerLocation"})
      if (unfinished(s, f) != 0) return false;
    return outcome_count(s, "processEscrowRelease", "ok") >= pickups_n && s.value("pending", -1) == 0;
  }, 240000ms);
  auto stats = cluster.stats();
  INFO(stats.dump());
  REQUIRE(done);
  CHECK(stats.value("dead_letters", -1) == 0);
  CHECK(stats["nodes"].size() == 2);

  // Django: exactly one successful release per pickup.
  auto state = django.state();
  std::map<int, int> ok_calls;
  for (auto& c : state["escrow_calls"])
    if (c["status_code"] == 200) ++ok_calls[c["pickup_id"].get<int>()];
  for (int id : pickups) {
    INFO("pickup " << id);
    CHECK(ok_calls[id] == 1);
  }

  // Outboxes of all three nodes (the killed one's too): per pickup, the pushes
  // of one event never start before the previous event's pushes ended.
  push_times times;
  wait_for([&] {  // the escrow_released pushes are children of the releases
    times = read_outboxes(dir / "cluster", 3);
    return std::all_of(pickups.begin(), pickups.end(), [&](int id) { return !times[id]["escrow_released"].empty(); });
  }, 60000ms);
  std::set<std::string> nodes_used;
  for (int i = 1; i <= 3; ++i)
    if (!outbox(dir / ("cluster/node-" + std::to_string(i))).empty()) nodes_used.insert("node-" + std::to_string(i));
  CHECK(nodes_used.size() == 3);  // work was spread over all nodes
  const std::vector<std::string> order = {"pickup_accepted", "pickup_delivered", "escrow_released"};
  for (int id : pickups) {
    INFO("pickup " << id);
    auto& t = times[id];
    for (auto& type : order) {
      INFO(type);
      CHECK(t[type].size() >= (type == "escrow_released" ? 1u : 2u));  // customers have two devices
    }
    for (size_t k = 0; k + 1 < order.size(); ++k) {
      if (t[order[k]].empty() || t[order[k + 1]].empty()) continue;
      auto last = *std::max_element(t[order[k]].begin(), t[order[k]].end());
      auto first = *std::min_element(t[order[k + 1]].begin(), t[order[k + 1]].end());
      INFO(order[k] << " last " << last << ", " << order[k + 1] << " first " << first);
      CHECK(last <= first);  // ISO 8601 UTC with ms: text order is time order
    }
  }

  auto code = cluster.stop();
  INFO(cluster.log());
  REQUIRE(code);
  CHECK(*code == 0);
  for (int i = 2; i <= 3; ++i) check_no_sanitizer_report(read_file(dir / ("cluster/node-" + std::to_string(i) + ".log")));
  check_no_sanitizer_report(read_file(dir / "cluster/broker.log"));
}
