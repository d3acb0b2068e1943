// The broker's side of the cluster protocol against scripted fake nodes (real
// `klynaa broker` process, DEALER sockets in the test): fan-out, leases, node
// loss, late results and ordering.
#include "fake_node.hpp"
#include "protocol/cluster.hpp"
#include "support.hpp"

#include <httplib.h>

using namespace klynaa::test;
using klynaa::protocol::reply_status;
namespace cl = klynaa::protocol::cluster;

namespace {

json stats_of(klynaa_server& srv) {
  auto addr = srv.endpoints()["admin"].get<std::string>();
  auto colon = addr.rfind(':');
  httplib::Client c(addr.substr(0, colon), std::stoi(addr.substr(colon + 1)));
  auto r = c.Get("/stats");
  return r ? json::parse(r->body, nullptr, false) : json::object();
}

int64_t count_of(const json& s, const std::string& fn, const std::string& what) {
  if (!s.contains("functions") || !s["functions"].contains(fn)) return 0;
  auto& f = s["functions"][fn];
  if (what == "ok" || what == "retry" || what == "dead")
    return f.contains("outcomes") ? f["outcomes"].value(what, int64_t{0}) : 0;
  return f.value(what, int64_t{0});
}

}  // namespace

TEST_CASE("a worker.location update reaches every geo node and counts once", "[cluster]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  fake_node a(ctx, srv.cluster(), "a", {"geo"}, 4);
  fake_node b(ctx, srv.cluster(), "b", {"geo", "notifier"}, 4);
  fake_node c(ctx, srv.cluster(), "c", {"escrow"}, 4);
  std::this_thread::sleep_for(300ms);  // all three registered
  raw_client client(ctx, srv.ingress());
  auto r = client.call(publish_frame("loc-1", "worker.location", location(5)));
  REQUIRE(r);
  REQUIRE(r->status == reply_status::accepted);
  auto ja = a.next_job();
  auto jb = b.next_job();
  REQUIRE(ja);
  REQUIRE(jb);
  CHECK(ja->job_id == "loc-1#1");
  CHECK(jb->job_id == "loc-1#1");
  CHECK(!c.next_job(500ms));  // no geo on c
  a.finish(*ja);
  std::this_thread::sleep_for(500ms);
  CHECK(count_of(stats_of(srv), "updateWorkerLocation", "ok") == 0);  // b has not applied it yet
  b.finish(*jb);
  CHECK(wait_for([&] { return count_of(stats_of(srv), "updateWorkerLocation", "ok") == 1; }, 5000ms));
}

TEST_CASE("a node that goes silent loses its jobs, they run elsewhere, and its late result is ignored",
          "[cluster]") {
  klynaa_server srv("broker", {{"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "1500"},
                               {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"}});
  zmq::context_t ctx;
  fake_node a(ctx, srv.cluster(), "a", {"escrow"}, 1);
  std::this_thread::sleep_for(200ms);
  raw_client client(ctx, srv.ingress());
  auto r = client.call(publish_frame("conf-9", "pickup.confirmed", {{"pickup_id", 9}, {"customer_id", 1}}));
  REQUIRE(r);
  zmq::socket_t raw(ctx, zmq::socket_type::dealer);
  // a receives the job, then freezes (sends nothing).
  zmq::pollitem_t items[1];
  (void)items;
  std::optional<cl::job> first;
  {
    auto end = std::chrono::steady_clock::now() + 10000ms;
    while (!first && std::chrono::steady_clock::now() < end) first = a.next_job(200ms);
  }
  REQUIRE(first);
  fake_node b(ctx, srv.cluster(), "b", {"escrow"}, 1);
  auto second = b.next_job(10000ms);  // after a's timeout the job runs on b
  REQUIRE(second);
  CHECK(second->job_id == first->job_id);
  CHECK(second->lease != first->lease);
  CHECK(second->attempt == 2);
  b.finish(*second);
  CHECK(wait_for([&] { return count_of(stats_of(srv), "processEscrowRelease", "ok") == 1; }, 5000ms));
  a.finish(*first);  // late: no second success
  std::this_thread::sleep_for(500ms);
  CHECK(count_of(stats_of(srv), "processEscrowRelease", "ok") == 1);
  CHECK(srv.log().find("node dropped") != std::string::npos);  // a timed out; its late done is not counted
}

TEST_CASE("a job whose lease a live node lists in its heartbeats is never taken back, but one it stops listing is",
          "[cluster][lease]") {
  klynaa_server srv("broker", {{"KLYNAA_CLUSTER_LEASE_MS", "1000"},
                               {"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "20000"},
                               {"KLYNAA_CLUSTER_HEARTBEAT_MS", "200"}});
  zmq::context_t ctx;
  fake_node a(ctx, srv.cluster(), "a", {"escrow"}, 1);
  std::this_thread::sleep_for(200ms);
  raw_client client(ctx, srv.ingress());
  auto r = client.call(publish_frame("conf-11", "pickup.confirmed", {{"pickup_id", 11}, {"customer_id", 1}}));
  REQUIRE(r);
  auto first = a.next_job(10000ms);
  REQUIRE(first);
  fake_node b(ctx, srv.cluster(), "b", {"escrow"}, 1);
  // a holds the job for three leases, renewing it: b gets nothing
  a.hold({first->lease}, 3000ms);
  CHECK_FALSE(b.next_job(300ms));
  CHECK(srv.log().find("job lease lost") == std::string::npos);
  // a stays alive but stops listing the job: it is taken back within a lease or so
  std::optional<cl::job> second;
  auto end = std::chrono::steady_clock::now() + 10000ms;
  while (!second && std::chrono::steady_clock::now() < end) {
    a.hold({}, 100ms);
    second = b.next_job(100ms);
  }
  REQUIRE(second);
  CHECK(second->job_id == first->job_id);
  CHECK(second->attempt == 2);
  CHECK(srv.log().find("lease expired") != std::string::npos);
}

TEST_CASE("jobs that arrive one at a time go to every node in turn, not all to the first", "[cluster]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  // Plenty of credit each, as nodes whose jobs run on fibers have: credit alone
  // would never move the work off the first node.
  fake_node a(ctx, srv.cluster(), "a", {"escrow"}, 1000);
  fake_node b(ctx, srv.cluster(), "b", {"escrow"}, 1000);
  std::this_thread::sleep_for(300ms);
  raw_client client(ctx, srv.ingress());
  int on_a = 0, on_b = 0;
  for (int i = 0; i < 6; ++i) {
    auto r = client.call(publish_frame("rr-" + std::to_string(i), "pickup.confirmed",
                                       {{"pickup_id", 300 + i}, {"customer_id", 1}}));
    REQUIRE(r);
    // one job in flight at a time: whichever node got it answers before the next
    std::optional<cl::job> j;
    auto end = std::chrono::steady_clock::now() + 10000ms;
    while (!j && std::chrono::steady_clock::now() < end) {
      if ((j = a.next_job(50ms))) {
        ++on_a;
        a.finish(*j);
      } else if ((j = b.next_job(50ms))) {
        ++on_b;
        b.finish(*j);
      }
    }
    REQUIRE(j);
  }
  CHECK(on_a == 3);
  CHECK(on_b == 3);
}

TEST_CASE("jobs of one pickup run one at a time in acceptance order, and other pickups in parallel",
          "[cluster][ordering]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  fake_node a(ctx, srv.cluster(), "a", {"notifier", "escrow"}, 10);
  std::this_thread::sleep_for(200ms);
  raw_client client(ctx, srv.ingress());
  REQUIRE(client.call(publish_frame("p1-acc", "pickup.accepted",
                                    {{"pickup_id", 1}, {"customer_id", 1}, {"worker_id", 2}})));
  REQUIRE(client.call(publish_frame("p1-conf", "pickup.confirmed", {{"pickup_id", 1}, {"customer_id", 1}})));
  REQUIRE(client.call(publish_frame("p2-conf", "pickup.confirmed", {{"pickup_id", 2}, {"customer_id", 1}})));
  std::vector<cl::job> got;
  while (auto j = a.next_job(1000ms)) got.push_back(*j);
  // p1-acc#1 and p2-conf#1 run at once; p1-conf#1 waits for p1-acc#1.
  REQUIRE(got.size() == 2);
  std::set<std::string> ids{got[0].job_id, got[1].job_id};
  CHECK(ids == std::set<std::string>{"p1-acc#1", "p2-conf#1"});
  for (auto& j : got)
    if (j.job_id == "p1-acc#1") a.finish(j);
  auto next = a.next_job(5000ms);
  REQUIRE(next);
  CHECK(next->job_id == "p1-conf#1");
}

TEST_CASE("a transient failure waits to retry and holds back its pickup's later jobs", "[cluster][ordering]") {
  klynaa_server srv("broker", {{"KLYNAA_RETRY_BASE_DELAY_MS", "300"}, {"KLYNAA_RETRY_MAX_DELAY_MS", "300"}});
  zmq::context_t ctx;
  fake_node a(ctx, srv.cluster(), "a", {"notifier", "escrow"}, 10);
  std::this_thread::sleep_for(200ms);
  raw_client client(ctx, srv.ingress());
  REQUIRE(client.call(publish_frame("q-acc", "pickup.accepted",
                                    {{"pickup_id", 3}, {"customer_id", 1}, {"worker_id", 2}})));
  REQUIRE(client.call(publish_frame("q-conf", "pickup.confirmed", {{"pickup_id", 3}, {"customer_id", 1}})));
  auto j1 = a.next_job();
  REQUIRE(j1);
  CHECK(j1->job_id == "q-acc#1");
  a.finish(*j1, "transient");
  auto j2 = a.next_job();
  REQUIRE(j2);
  CHECK(j2->job_id == "q-acc#1");  // its retry, before q-conf#1
  CHECK(j2->attempt == 2);
  a.finish(*j2);
  auto j3 = a.next_job();
  REQUIRE(j3);
  CHECK(j3->job_id == "q-conf#1");
}

TEST_CASE("a node claiming an unknown actor kind, or speaking garbage, is refused and disturbs no one",
          "[cluster]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  fake_node bad(ctx, srv.cluster(), "bad", {"geo", "teleporter"}, 4);
  zmq::socket_t garbage(ctx, zmq::socket_type::dealer);
  garbage.set(zmq::sockopt::linger, 0);
  garbage.connect(srv.cluster());
  garbage.send(zmq::str_buffer("\xc1 not msgpack"), zmq::send_flags::none);
  fake_node good(ctx, srv.cluster(), "good", {"geo"}, 4);
  std::this_thread::sleep_for(300ms);
  raw_client client(ctx, srv.ingress());
  REQUIRE(client.call(publish_frame("loc-9", "worker.location", location(9))));
  auto j = good.next_job();
  REQUIRE(j);
  good.finish(*j);
  CHECK(!bad.next_job(500ms));
  CHECK(wait_for([&] { return count_of(stats_of(srv), "updateWorkerLocation", "ok") == 1; }, 5000ms));
  auto nodes = stats_of(srv)["nodes"];
  REQUIRE(nodes.size() == 1);
  CHECK(nodes[0]["name"] == "good");
  CHECK(srv.log().find("unknown actor kind") != std::string::npos);
  CHECK(srv.log().find("undecodable cluster message") != std::string::npos);
}

// Regression (found by the netns test): stats taken while a job's children of a
// function with no live job yet were uncommitted made the broker abort.
TEST_CASE("stats while thousands of children of a new function wait for their commit keep the broker up",
          "[cluster][stats]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  fake_node node(ctx, srv.cluster(), "a", {"escrow"}, 4);  // no notifier: the children stay ready
  raw_client client(ctx, srv.ingress());
  auto r = client.call(publish_frame("c7", "pickup.confirmed", {{"pickup_id", 7}, {"customer_id", 101}}));
  REQUIRE(r);
  REQUIRE(r->status == reply_status::accepted);
  auto job = node.next_job();
  REQUIRE(job);
  cl::done d;
  d.job_id = job->job_id;
  d.lease = job->lease;
  d.outcome = "ok";
  d.result_json = "{}";
  const int n = 20000;
  for (int i = 0; i < n; ++i)
    d.children.push_back({"#escrow-released-7-" + std::to_string(i), "sendPickupNotification",
                          R"({"pickup_id":7,"notification_type":"escrow_released","user_type":"customer","user_id":101})",
                          0});
  node.send(d);
  for (int i = 0; i < 20; ++i) {  // stats published every 250 ms while they commit
    stats_of(srv);
    std::this_thread::sleep_for(100ms);
  }
  CHECK(srv.proc().running());
  CHECK(client.call(ping_frame()));
  CHECK(wait_for([&] { return count_of(stats_of(srv), "sendPickupNotification", "ready") == n; }, 30000ms));
}

TEST_CASE("a node that withdraws a kind gets none of it again, and the jobs it hands back run elsewhere",
          "[cluster][supervision]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  fake_node a(ctx, srv.cluster(), "a", {"escrow", "notifier"}, 4);
  std::this_thread::sleep_for(300ms);  // a registers first and gets the job
  raw_client client(ctx, srv.ingress());
  auto r = client.call(publish_frame("w1", "pickup.confirmed", {{"pickup_id", 1}, {"customer_id", 101}}));
  REQUIRE(r);
  REQUIRE(r->status == reply_status::accepted);
  auto job = a.next_job();
  REQUIRE(job);
  fake_node b(ctx, srv.cluster(), "b", {"escrow"}, 4);
  std::this_thread::sleep_for(300ms);
  a.send(cl::withdraw{{"escrow"}, "11 worker restarts within 60 s", 2, {job->job_id}});
  auto again = b.next_job();
  REQUIRE(again);
  CHECK(again->job_id == job->job_id);
  CHECK(again->lease != job->lease);
  b.finish(*again);
  CHECK(wait_for([&] { return count_of(stats_of(srv), "processEscrowRelease", "ok") == 1; }, 5000ms));
  // a hosts no escrow any more: the next release goes to b even though a has credit.
  r = client.call(publish_frame("w2", "pickup.confirmed", {{"pickup_id", 2}, {"customer_id", 101}}));
  REQUIRE(r);
  CHECK(!a.next_job(700ms));
  auto next = b.next_job();
  REQUIRE(next);
  CHECK(next->job_id == "w2#1");
  auto s = stats_of(srv);
  for (auto& n : s["nodes"])
    if (n["name"] == "a") {
      CHECK(n["kinds"] == json::array({"notifier"}));
      CHECK(n["withdrawn"]["escrow"] == "11 worker restarts within 60 s");
    }
}

TEST_CASE("a node that takes batches gets the jobs of one dispatch pass in one frame and may answer in one",
          "[cluster][batch]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  raw_client client(ctx, srv.ingress());
  const int n = 40;
  for (int i = 1; i <= n; ++i) {  // queued before any node is there
    auto r = client.call(publish_frame("acc-" + std::to_string(i), "pickup.accepted",
                                       {{"pickup_id", i}, {"customer_id", 100 + i}, {"worker_id", 7}}));
    REQUIRE(r);
    REQUIRE(r->status == reply_status::accepted);
  }
  fake_node node(ctx, srv.cluster(), "a", {"notifier"}, n, true);
  std::vector<cl::job> jobs;
  while (static_cast<int>(jobs.size()) < n) {
    auto j = node.next_job();
    REQUIRE(j);
    jobs.push_back(*j);
  }
  CHECK(node.broker_batches);              // the WELCOME said the broker takes them
  CHECK(node.batches_received >= 1);
  CHECK(node.batches_received < n / 2);    // many jobs a frame, not one
  node.finish_all(jobs);                   // 40 DONEs in one frame
  CHECK(wait_for([&] { return count_of(stats_of(srv), "sendPickupNotification", "ok") == n; }, 10000ms));
  auto link = stats_of(srv)["cluster_link"];
  CHECK(link["messages_received"].get<int64_t>() >= link["frames_received"].get<int64_t>() + n - 1);
  CHECK(link["messages_sent"].get<int64_t>() > link["frames_sent"].get<int64_t>());
}

TEST_CASE("a node that does not say it takes batches gets one job a frame, and a batch inside a batch is ignored",
          "[cluster][batch]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  raw_client client(ctx, srv.ingress());
  for (int i = 1; i <= 5; ++i) {
    auto r = client.call(publish_frame("acc-" + std::to_string(i), "pickup.accepted",
                                       {{"pickup_id", i}, {"customer_id", 100 + i}, {"worker_id", 7}}));
    REQUIRE(r);
  }
  fake_node node(ctx, srv.cluster(), "a", {"notifier"}, 5);  // batch false, as an older node's READY without the key
  std::vector<cl::job> jobs;
  for (int i = 0; i < 5; ++i) {
    auto j = node.next_job();
    REQUIRE(j);
    jobs.push_back(*j);
  }
  CHECK(node.batches_received == 0);
  // A DONE wrapped twice is not applied; the broker says so and stays up.
  cl::done d;
  d.job_id = jobs[0].job_id;
  d.lease = jobs[0].lease;
  d.outcome = "ok";
  d.result_json = "{}";
  node.send(cl::batch{{cl::encode_batch({cl::encode(d)})}});
  CHECK(wait_for([&] { return srv.log().find("a batch inside a batch ignored") != std::string::npos; }, 5000ms));
  std::this_thread::sleep_for(1000ms);  // /stats is published every 250 ms: an applied DONE would show by now
  CHECK(count_of(stats_of(srv), "sendPickupNotification", "ok") == 0);
  for (auto& j : jobs) node.finish(j);
  CHECK(wait_for([&] { return count_of(stats_of(srv), "sendPickupNotification", "ok") == 5; }, 10000ms));
}

TEST_CASE("a node the broker does not know gets one bye for a batch of its dones", "[cluster][batch]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  zmq::socket_t stranger(ctx, zmq::socket_type::dealer);  // never sent READY (the broker restarted, say)
  stranger.set(zmq::sockopt::linger, 0);
  stranger.connect(srv.cluster());
  std::vector<std::string> dones;
  for (int i = 0; i < 3; ++i) {
    cl::done d;
    d.job_id = "old-" + std::to_string(i) + "#1";
    d.lease = 100 + i;
    d.outcome = "ok";
    d.credit = 1;
    dones.push_back(cl::encode(d));
  }
  auto batch = cl::encode_batch(dones);
  stranger.send(zmq::buffer(batch), zmq::send_flags::none);
  int byes = 0;
  const auto end = std::chrono::steady_clock::now() + 1500ms;
  while (std::chrono::steady_clock::now() < end) {
    zmq::pollitem_t items[] = {{static_cast<void*>(stranger), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, 50ms);
    zmq::message_t m;
    while (stranger.recv(m, zmq::recv_flags::dontwait)) {
      auto msg = cl::decode(m.data(), m.size());
      if (msg && std::holds_alternative<cl::bye>(*msg)) ++byes;
    }
  }
  CHECK(byes == 1);
  CHECK(srv.proc().running());
}

TEST_CASE("jobs the broker could not send to a vanished node run elsewhere without costing an attempt",
          "[cluster][batch]") {
  // The node disconnects without a word; the broker still counts it until
  // node_timeout_ms. The next job for it cannot be sent (the connection is
  // gone): it is ready again at once, its attempt not counted, since no node
  // saw it, and the node is dropped.
  klynaa_server srv("broker", {{"KLYNAA_CLUSTER_NODE_TIMEOUT_MS", "60000"}});
  zmq::context_t ctx;
  {
    fake_node gone(ctx, srv.cluster(), "gone", {"escrow"}, 5, true);
    REQUIRE(wait_for([&] { return stats_of(srv)["nodes"].size() == 1; }, 5000ms));
  }  // its socket closes here
  std::this_thread::sleep_for(500ms);  // the broker's socket has seen the connection go
  raw_client client(ctx, srv.ingress());
  auto r = client.call(publish_frame("conf-9", "pickup.confirmed", {{"pickup_id", 9}, {"customer_id", 1}}));
  REQUIRE(r);
  REQUIRE(r->status == reply_status::accepted);
  CHECK(wait_for([&] { return srv.log().find(R"("reason":"unreachable")") != std::string::npos; }, 10000ms));
  fake_node b(ctx, srv.cluster(), "b", {"escrow"}, 5, true);
  auto j = b.next_job();
  REQUIRE(j);
  CHECK(j->job_id == "conf-9#1");
  CHECK(j->attempt == 1);  // not 2: the failed send cost nothing
  CHECK(srv.log().find("job lease lost") == std::string::npos);
}
