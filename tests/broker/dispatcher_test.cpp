// Tests of broker/dispatcher: node sessions, credit, leases, heartbeats, fan-out
// and outboxes (docs/cluster-protocol.md), in-process with a host that records
// what would go out on the cluster socket. Each test passes `now`.
#include "broker/dispatcher.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <set>

using namespace klynaa;
using namespace klynaa::broker;
namespace cl = protocol::cluster;

namespace {

/// Records frames per node (decoded, BATCHes opened) and the job events.
struct fake_host final : dispatcher_host {
  std::map<std::string, std::vector<cl::message>> sent;
  std::map<std::string, int> frames;       ///< frames per node
  std::set<std::string> unreachable;
  std::vector<std::pair<std::string, job_state>> changed;
  std::vector<cl::done> done;
  std::vector<std::pair<std::string, std::string>> lost;  ///< job id, why

  bool send_frame(const std::string& identity, const std::string& frame) override {
    if (unreachable.count(identity)) return false;
    ++frames[identity];
    auto m = cl::decode(frame.data(), frame.size());
    REQUIRE(m);
    if (auto* b = std::get_if<cl::batch>(&*m)) {
      for (auto& f : b->frames) sent[identity].push_back(*cl::decode(f.data(), f.size()));
    } else {
      sent[identity].push_back(*m);
    }
    return true;
  }
  void job_changed(live_job& j, job_state s) override { changed.emplace_back(j.id, s); }
  void job_done(live_job& j, const cl::done& d, int64_t) override { done.push_back(d); }
  void job_lost(live_job& j, const std::string& why, int64_t) override { lost.emplace_back(j.id, why); }

  template <class T>
  std::vector<T> of(const std::string& identity) {
    std::vector<T> out;
    for (auto& m : sent[identity])
      if (auto* t = std::get_if<T>(&m)) out.push_back(*t);
    return out;
  }
};

std::string frame(cl::message m) { return cl::encode(m); }

std::string ready(const std::string& name, std::vector<std::string> kinds, int64_t credit, bool batch = false) {
  cl::ready r;
  r.node = name;
  r.kinds = std::move(kinds);
  r.credit = credit;
  r.batch = batch;
  return frame(r);
}

std::string done_of(const cl::job& j, const std::string& outcome = "ok", int64_t credit = 1) {
  cl::done d;
  d.job_id = j.job_id;
  d.lease = j.lease;
  d.outcome = outcome;
  d.error_message = outcome == "ok" ? "" : "it failed";
  d.credit = credit;
  return frame(d);
}

live_job job(const std::string& id, int64_t seq, const std::string& function = "sendPickupNotification",
             const std::string& kind = "notifier") {
  live_job j;
  j.id = id;
  j.request_id = "r";
  j.function = function;
  j.kind = kind;
  j.seq = seq;
  return j;
}

struct fixture {
  protocol::config cfg;
  job_queue queue;
  fake_host host;
  dispatcher d{queue, cfg, host};
  void connect(const std::string& id, std::vector<std::string> kinds, int64_t credit, bool batch = false,
               int64_t now = 0) {
    auto f = ready(id, std::move(kinds), credit, batch);
    d.on_frame(id, f.data(), f.size(), now);
  }
  void receive(const std::string& id, const std::string& f, int64_t now) { d.on_frame(id, f.data(), f.size(), now); }
};

}  // namespace

TEST_CASE("a READY registers the node and is answered WELCOME with the heartbeat and lease", "[dispatcher]") {
  fixture f;
  f.cfg.cluster.heartbeat_ms = 700;
  f.cfg.cluster.lease_ms = 9000;
  f.connect("n1", {"notifier", "escrow"}, 4);
  auto w = f.host.of<cl::welcome>("n1");
  REQUIRE(w.size() == 1);
  CHECK(w[0].heartbeat_ms == 700);
  CHECK(w[0].lease_ms == 9000);
  CHECK(w[0].batch);
  REQUIRE(f.d.nodes().count("n1"));
  CHECK(f.d.nodes().at("n1").credit == 4);
  CHECK(f.d.nodes().at("n1").kinds == std::set<std::string>{"escrow", "notifier"});
}

TEST_CASE("a READY claiming an unknown actor kind registers nothing and gets no answer", "[dispatcher]") {
  fixture f;
  f.connect("n1", {"notifier", "teleporter"}, 4);
  CHECK(f.d.nodes().empty());
  CHECK(f.host.sent.empty());
}

TEST_CASE("a node the broker does not know is told BYE once per frame, a BATCH included", "[dispatcher]") {
  fixture f;
  f.receive("ghost", frame(cl::credit{3}), 0);
  CHECK(f.host.of<cl::bye>("ghost").size() == 1);
  f.receive("ghost", cl::encode_batch({frame(cl::credit{1}), frame(cl::credit{2}), frame(cl::heartbeat{})}), 0);
  CHECK(f.host.of<cl::bye>("ghost").size() == 2);
}

TEST_CASE("dispatch hands a node as many jobs as its credit, each under a lease, and records them running",
          "[dispatcher]") {
  fixture f;
  for (int i = 1; i <= 3; ++i) f.queue.add(job("j" + std::to_string(i), i), 0);
  f.connect("n1", {"notifier"}, 2);
  f.d.dispatch(10);
  auto jobs = f.host.of<cl::job>("n1");
  REQUIRE(jobs.size() == 2);
  CHECK(jobs[0].job_id == "j1");
  CHECK(jobs[0].attempt == 1);
  CHECK(jobs[1].lease != jobs[0].lease);
  CHECK(f.d.nodes().at("n1").credit == 0);
  CHECK(f.d.nodes().at("n1").running == 2);
  CHECK(f.queue.find("j1")->state == job_state::running);
  CHECK(f.queue.find("j1")->lease_deadline == 10 + f.cfg.cluster.lease_ms);
  CHECK(f.queue.find("j3")->state == job_state::ready);
  CHECK(f.host.changed == std::vector<std::pair<std::string, job_state>>{{"j1", job_state::running},
                                                                          {"j2", job_state::running}});
  // A DONE frees its slot: the next job goes out.
  f.receive("n1", done_of(jobs[0]), 20);
  REQUIRE(f.host.done.size() == 1);
  CHECK(f.host.done[0].job_id == "j1");
  f.d.dispatch(30);
  CHECK(f.host.of<cl::job>("n1").size() == 3);
}

TEST_CASE("a DONE under an old lease is ignored but still returns the node's credit", "[dispatcher]") {
  fixture f;
  f.queue.add(job("j1", 1), 0);
  f.connect("n1", {"notifier"}, 1);
  f.d.dispatch(0);
  auto sent = f.host.of<cl::job>("n1").at(0);
  sent.lease += 100;
  f.receive("n1", done_of(sent), 5);
  CHECK(f.host.done.empty());
  CHECK(f.queue.find("j1")->state == job_state::running);
  CHECK(f.d.nodes().at("n1").credit == 1);
}

TEST_CASE("jobs go to nodes with credit in turn, not always to the first", "[dispatcher]") {
  fixture f;
  f.connect("a", {"notifier"}, 10);
  f.connect("b", {"notifier"}, 10);
  for (int i = 1; i <= 4; ++i) {
    f.queue.add(job("j" + std::to_string(i), i), i);
    f.d.dispatch(i);
  }
  CHECK(f.host.of<cl::job>("a").size() == 2);
  CHECK(f.host.of<cl::job>("b").size() == 2);
}

TEST_CASE("a node that takes BATCH frames gets the jobs of one pass in one frame", "[dispatcher]") {
  fixture f;
  for (int i = 1; i <= 3; ++i) f.queue.add(job("j" + std::to_string(i), i), 0);
  f.connect("n1", {"notifier"}, 5, /*batch=*/true);
  const int before = f.host.frames["n1"];
  f.d.dispatch(0);
  CHECK(f.host.frames["n1"] == before + 1);
  CHECK(f.host.of<cl::job>("n1").size() == 3);
  CHECK(f.d.link().messages_sent == f.d.link().frames_sent + 2);
}

TEST_CASE("an unreachable batch node is dropped and its jobs are ready again with the attempt given back",
          "[dispatcher]") {
  fixture f;
  f.queue.add(job("j1", 1), 0);
  f.connect("n1", {"notifier"}, 5, /*batch=*/true);
  f.host.unreachable.insert("n1");
  f.d.dispatch(0);
  CHECK(f.d.nodes().empty());
  auto* j = f.queue.find("j1");
  CHECK(j->state == job_state::ready);
  CHECK(j->attempts == 0);
  CHECK(f.host.changed.back() == std::make_pair(std::string("j1"), job_state::ready));
  CHECK(f.host.lost.empty());  // no node saw it
}

TEST_CASE("an unreachable node without batches is dropped and its job waits for the next node", "[dispatcher]") {
  fixture f;
  f.queue.add(job("j1", 1), 0);
  f.connect("n1", {"notifier"}, 5);
  f.host.unreachable.insert("n1");
  f.d.dispatch(0);
  CHECK(f.d.nodes().empty());
  CHECK(f.queue.find("j1")->state == job_state::ready);
  f.connect("n2", {"notifier"}, 5);
  f.d.dispatch(1);
  CHECK(f.host.of<cl::job>("n2").size() == 1);
}

TEST_CASE("a silent node is dropped after cluster.node_timeout_ms and its jobs are lost, a quiet one gets a "
          "heartbeat", "[dispatcher]") {
  fixture f;
  f.cfg.cluster.node_timeout_ms = 5000;
  f.cfg.cluster.heartbeat_ms = 1000;
  f.queue.add(job("j1", 1), 0);
  f.connect("n1", {"notifier"}, 1, false, 0);
  f.d.dispatch(0);
  f.d.check_nodes(1500);
  CHECK(f.host.of<cl::heartbeat>("n1").size() == 1);
  f.d.check_nodes(5001);
  CHECK(f.d.nodes().empty());
  REQUIRE(f.host.lost.size() == 1);
  CHECK(f.host.lost[0] == std::make_pair(std::string("j1"), std::string("node timed out")));
}

TEST_CASE("a HEARTBEAT's leases keep the node's jobs, an expired lease is lost", "[dispatcher]") {
  fixture f;
  f.cfg.cluster.lease_ms = 1000;
  f.cfg.cluster.node_timeout_ms = 100000;
  f.queue.add(job("j1", 1), 0);
  f.queue.add(job("j2", 2), 0);
  f.connect("n1", {"notifier"}, 2);
  f.d.dispatch(0);
  auto jobs = f.host.of<cl::job>("n1");
  cl::heartbeat hb;
  hb.leases = {jobs[0].lease};
  f.receive("n1", frame(hb), 900);
  f.d.check_nodes(1500);
  REQUIRE(f.host.lost.size() == 1);
  CHECK(f.host.lost[0] == std::make_pair(std::string("j2"), std::string("lease expired")));
}

TEST_CASE("a fan-out job goes to every node of its kind and ends once, with the worst outcome", "[dispatcher]") {
  fixture f;
  f.connect("g1", {"geo"}, 5);
  f.connect("g2", {"geo"}, 5);
  f.queue.add(job("loc", 1, "updateWorkerLocation", "geo"), 0);
  f.d.dispatch(100);
  auto a = f.host.of<cl::job>("g1");
  auto b = f.host.of<cl::job>("g2");
  REQUIRE(a.size() == 1);
  REQUIRE(b.size() == 1);
  CHECK(a[0].lease == b[0].lease);
  CHECK(f.host.changed.empty());  // a fan-out is not stored as running
  f.receive("g1", done_of(a[0], "transient"), 150);
  CHECK(f.host.done.empty());
  f.receive("g2", done_of(b[0], "ok"), 160);
  REQUIRE(f.host.done.size() == 1);
  CHECK(f.host.done[0].outcome == "transient");
  CHECK(f.host.done[0].error_code == "fanout");
  CHECK(f.host.done[0].error_message == "it failed");
  CHECK(f.host.done[0].duration_ms == 60);
}

TEST_CASE("a fan-out whose last awaited node leaves ends with what the others said", "[dispatcher]") {
  fixture f;
  f.connect("g1", {"geo"}, 5);
  f.connect("g2", {"geo"}, 5);
  f.queue.add(job("loc", 1, "updateWorkerLocation", "geo"), 0);
  f.d.dispatch(0);
  f.receive("g1", done_of(f.host.of<cl::job>("g1")[0]), 10);
  f.receive("g2", frame(cl::bye{}), 20);
  REQUIRE(f.host.done.size() == 1);
  CHECK(f.host.done[0].outcome == "ok");
  CHECK(f.host.lost.empty());
}

TEST_CASE("a WITHDRAW stops the kind for that node and hands its running jobs back", "[dispatcher]") {
  fixture f;
  f.queue.add(job("j1", 1), 0);
  f.connect("n1", {"notifier", "escrow"}, 3);
  f.d.dispatch(0);
  cl::withdraw w;
  w.kinds = {"notifier"};
  w.reason = "too many restarts";
  w.credit = 1;
  w.jobs = {"j1"};
  f.receive("n1", frame(w), 10);
  const auto& n = f.d.nodes().at("n1");
  CHECK(n.kinds == std::set<std::string>{"escrow"});
  CHECK(n.withdrawn.at("notifier") == "too many restarts");
  CHECK(n.credit == 2);  // 2 left + 1 handed back - 1 withdrawn
  REQUIRE(f.host.lost.size() == 1);
  CHECK(f.host.lost[0].second == "node n1 withdrew notifier: too many restarts");
}

TEST_CASE("BYE goes to every node when the broker stops, and a BATCH counts as the messages it carries",
          "[dispatcher]") {
  fixture f;
  f.connect("a", {"notifier"}, 1);
  f.connect("b", {"notifier"}, 1);
  f.receive("a", cl::encode_batch({frame(cl::credit{1}), frame(cl::credit{1})}), 0);
  CHECK(f.d.link().frames_received == 3);
  CHECK(f.d.link().messages_received == 4);
  CHECK(f.d.nodes().at("a").credit == 3);
  f.d.say_bye();
  CHECK(f.host.of<cl::bye>("a").size() == 1);
  CHECK(f.host.of<cl::bye>("b").size() == 1);
}
