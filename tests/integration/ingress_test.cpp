// The ingress through real sockets against a real `klynaa` process
// (docs/ingress-protocol.md).
#include <msgpack.hpp>

#include <set>

#include "protocol/cluster.hpp"
#include "support.hpp"

using namespace klynaa::test;
using klynaa::protocol::reply_status;

namespace {

std::string pack_map(const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& body, uint32_t n) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(n);
  body(pk);
  return std::string(buf.data(), buf.size());
}

void expect_rejected(raw_client& c, const std::string& frame, const std::string& code,
                     const std::string& field = {}) {
  auto r = c.call(frame);
  REQUIRE(r);
  CHECK(r->status == reply_status::rejected);
  REQUIRE(r->error);
  CHECK(r->error->code == code);
  CHECK(!r->error->message.empty());
  if (!field.empty()) CHECK(r->error->field == field);
}

void expect_ping_answers(zmq::context_t& ctx, const std::string& ep) {
  raw_client p(ctx, ep);
  auto r = p.call(ping_frame());
  REQUIRE(r);
  CHECK(r->status == reply_status::pong);
  CHECK(!r->id);  // a ping without id: id nil
  klynaa::protocol::request with_id;
  with_id.operation = klynaa::protocol::op::ping;
  with_id.id = "ping-1";
  auto echoed = p.call(klynaa::protocol::encode_request(with_id));
  REQUIRE(echoed);
  CHECK(echoed->status == reply_status::pong);
  CHECK(echoed->id == std::optional<std::string>("ping-1"));
}

}  // namespace

TEST_CASE("every rejection code of the ingress comes back through a real socket", "[ingress]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());

  SECTION("not msgpack is malformed") { expect_rejected(c, "\xc1garbage", "malformed"); }
  SECTION("a msgpack array is malformed") {
    msgpack::sbuffer b;
    msgpack::pack(b, std::vector<int>{1, 2});
    expect_rejected(c, std::string(b.data(), b.size()), "malformed");
  }
  SECTION("two payload frames are malformed") {
    c.send_frames({"", ping_frame(), ping_frame()});
    auto r = c.recv_frames();
    REQUIRE(r.size() == 2);  // delimiter kept
    auto rep = klynaa::protocol::decode_reply(r.back().data(), r.back().size());
    REQUIRE(rep);
    CHECK(rep->error->code == "malformed");
  }
  SECTION("v other than 1 is unsupported_version") {
    auto f = pack_map([](auto& pk) { pk.pack(std::string("v")); pk.pack(2); }, 1);
    expect_rejected(c, f, "unsupported_version");
  }
  SECTION("a missing v is missing_field") {
    auto f = pack_map([](auto& pk) { pk.pack(std::string("op")); pk.pack(std::string("ping")); }, 1);
    expect_rejected(c, f, "missing_field", "v");
  }
  SECTION("an id with a space is invalid_field and is echoed") {
    auto r = c.call(publish_frame("bad id", "worker.location", location(1)));
    REQUIRE(r);
    CHECK(r->error->code == "invalid_field");
    CHECK(r->error->field == "id");
    CHECK(r->id == std::optional<std::string>("bad id"));
  }
  SECTION("an unknown type is unknown_type") {
    expect_rejected(c, publish_frame("e1", "pickup.exploded", {}), "unknown_type", "type");
  }
  SECTION("a latitude out of range names data.lat") {
    auto d = location(1);
    d["lat"] = 91.5;
    expect_rejected(c, publish_frame("e2", "worker.location", d), "invalid_field", "data.lat");
  }
  SECTION("a missing required field names it") {
    expect_rejected(c, publish_frame("e3", "pickup.accepted", {{"pickup_id", 1}, {"customer_id", 2}}),
                    "missing_field", "data.worker_id");
  }
  expect_ping_answers(ctx, srv.ingress());
}

TEST_CASE("a frame over max_bytes is too_large with a nil id", "[ingress]") {
  klynaa_server srv("broker", {{"KLYNAA_INGRESS_MAX_BYTES", "1024"}});
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  auto d = location(1);
  d["pad"] = std::string(2000, 'x');
  auto r = c.call(publish_frame("big-1", "worker.location", d));
  REQUIRE(r);
  CHECK(r->status == reply_status::rejected);
  CHECK(r->error->code == "too_large");
  CHECK(!r->id);
}

TEST_CASE("a frame over 16 x max_bytes drops the connection without a reply", "[ingress]") {
  klynaa_server srv("broker", {{"KLYNAA_INGRESS_MAX_BYTES", "1024"}});
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  c.send_frames({"", std::string(20000, 'x')});
  CHECK(c.recv_frames(1500ms).empty());
  expect_ping_answers(ctx, srv.ingress());
}

TEST_CASE("REQ and DEALER clients, with and without the delimiter, get matching replies", "[ingress]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  SECTION("REQ") {
    raw_client c(ctx, srv.ingress(), zmq::socket_type::req);
    c.send_frames({publish_frame("req-1", "worker.location", location(1))});
    auto r = c.recv_frames();
    REQUIRE(r.size() == 1);  // REQ strips the delimiter
    auto rep = klynaa::protocol::decode_reply(r[0].data(), r[0].size());
    REQUIRE(rep);
    CHECK(rep->status == reply_status::accepted);
    CHECK(rep->jobs == std::vector<std::string>{"req-1#1"});
  }
  SECTION("DEALER with delimiter") {
    raw_client c(ctx, srv.ingress());
    c.send_frames({"", publish_frame("d-1", "worker.location", location(1))});
    auto r = c.recv_frames();
    REQUIRE(r.size() == 2);
    CHECK(r[0].empty());
  }
  SECTION("DEALER without delimiter") {
    raw_client c(ctx, srv.ingress());
    c.send_frames({publish_frame("d-2", "worker.location", location(1))});
    auto r = c.recv_frames();
    REQUIRE(r.size() == 1);
    auto rep = klynaa::protocol::decode_reply(r[0].data(), r[0].size());
    REQUIRE(rep);
    CHECK(rep->status == reply_status::accepted);
  }
}

TEST_CASE("a duplicate id returns the first job ids", "[ingress]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  auto data = json{{"pickup_id", 7}, {"customer_id", 3}, {"worker_id", 4}};
  auto first = c.call(publish_frame("dlv-7", "pickup.delivered", data));
  REQUIRE(first);
  CHECK(first->status == reply_status::accepted);
  CHECK(first->jobs == std::vector<std::string>{"dlv-7#1", "dlv-7#2"});
  auto again = c.call(publish_frame("dlv-7", "pickup.delivered", data));
  REQUIRE(again);
  CHECK(again->status == reply_status::duplicate);
  CHECK(again->jobs == first->jobs);
}

TEST_CASE("2000 pipelined requests on one DEALER are all answered, matched by id", "[ingress]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  const int n = 2000;
  for (int i = 0; i < n; ++i)
    c.send_frames({publish_frame("pipe-" + std::to_string(i), "worker.location", location(i % 50 + 1))});
  std::set<std::string> seen;
  for (int i = 0; i < n; ++i) {
    auto r = c.recv_frames(20000ms);
    REQUIRE(!r.empty());
    auto rep = klynaa::protocol::decode_reply(r.back().data(), r.back().size());
    REQUIRE(rep);
    REQUIRE(rep->status == reply_status::accepted);
    REQUIRE(rep->id);
    REQUIRE(rep->jobs == std::vector<std::string>{*rep->id + "#1"});
    seen.insert(*rep->id);
  }
  CHECK(seen.size() == static_cast<size_t>(n));
}

TEST_CASE("kill -9 right after 1000 acknowledgements loses nothing acknowledged", "[ingress][durability]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  std::vector<std::string> acked;
  {
    raw_client c(ctx, srv.ingress());
    for (int i = 0; i < 1500; ++i)
      c.send_frames({publish_frame("k9-" + std::to_string(i), "worker.location", location(i % 9 + 1))});
    while (acked.size() < 1000) {
      auto r = c.recv_frames(20000ms);
      REQUIRE(!r.empty());
      auto rep = klynaa::protocol::decode_reply(r.back().data(), r.back().size());
      REQUIRE(rep);
      REQUIRE(rep->status == reply_status::accepted);
      acked.push_back(*rep->id);
    }
    srv.proc().kill(SIGKILL);  // the instant after the 1000th ack
  }
  srv.proc().wait(5000ms);
  srv.start();
  raw_client c(ctx, srv.ingress());
  for (auto& id : acked)
    c.send_frames({publish_frame(id, "worker.location", location(1))});
  size_t dup = 0;
  for (size_t i = 0; i < acked.size(); ++i) {
    auto r = c.recv_frames(20000ms);
    REQUIRE(!r.empty());
    auto rep = klynaa::protocol::decode_reply(r.back().data(), r.back().size());
    REQUIRE(rep);
    if (rep->status == reply_status::duplicate && rep->jobs == std::vector<std::string>{*rep->id + "#1"})
      ++dup;
  }
  CHECK(dup == acked.size());
}

TEST_CASE("a storm of hostile frames does not stop another client's pings", "[ingress]") {
  klynaa_server srv("broker", {{"KLYNAA_INGRESS_MAX_BYTES", "4096"}});
  zmq::context_t ctx;
  std::atomic<bool> stop{false};
  std::thread storm([&] {
    raw_client h(ctx, srv.ingress());
    std::mt19937 rng(42);
    std::vector<std::string> hostile = {
        "", "\xc1", std::string(5000, 'A'), std::string("\xdf\xff\xff\xff\xff", 5),
        std::string("\xdd\xff\xff\xff\xff", 5), std::string(40, '\x91') + "\x01",
        std::string(100, '\x81') + "\xc0",
        pack_map([](auto& pk) { pk.pack(std::string("v")); pk.pack(1.5); }, 1)};
    int i = 0;
    while (!stop.load() && i < 20000) {
      auto& f = hostile[static_cast<size_t>(i++) % hostile.size()];
      if (rng() % 3 == 0)
        h.send_frames({"", f, f});
      else
        h.send_frames({"", f});
      h.recv_frames(0ms);
    }
  });
  raw_client p(ctx, srv.ingress());
  int pongs = 0;
  for (int i = 0; i < 50; ++i) {
    auto r = p.call(ping_frame(), true, 5000ms);
    if (r && r->status == reply_status::pong) ++pongs;
  }
  stop.store(true);
  storm.join();
  CHECK(pongs == 50);
  CHECK(srv.proc().running());
}

TEST_CASE("the ingress answers overloaded above ingress.max_pending", "[ingress]") {
  klynaa_server srv("broker", {{"KLYNAA_INGRESS_MAX_PENDING", "1"}});
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  auto first = c.call(publish_frame("ov-0", "worker.location", location(1)));
  REQUIRE(first);
  REQUIRE(first->status == reply_status::accepted);  // no node: it stays pending
  auto r = c.call(publish_frame("ov-1", "worker.location", location(1)));
  REQUIRE(r);
  CHECK(r->status == reply_status::rejected);
  CHECK(r->error->code == "overloaded");
  CHECK(r->retry_after_ms.value_or(0) > 0);
  CHECK(r->id == std::optional<std::string>("ov-1"));
  CHECK(c.call(ping_frame())->status == reply_status::pong);
}

TEST_CASE("while draining after SIGTERM the ingress answers shutting_down, then exits 0", "[ingress][shutdown]") {
  klynaa_server srv("broker");
  zmq::context_t ctx;
  // A node that takes one job and never finishes it keeps the broker draining.
  zmq::socket_t node(ctx, zmq::socket_type::dealer);
  node.set(zmq::sockopt::linger, 0);
  node.connect(srv.cluster());
  namespace cl = klynaa::protocol::cluster;
  auto frame = cl::encode(cl::message(cl::ready{"fake", {"geo"}, 1}));
  node.send(zmq::buffer(frame), zmq::send_flags::none);
  raw_client c(ctx, srv.ingress());
  auto r = c.call(publish_frame("sd-1", "worker.location", location(1)));
  REQUIRE(r);
  REQUIRE(r->status == reply_status::accepted);
  bool got_job = wait_for([&] {
    zmq::message_t m;
    while (node.recv(m, zmq::recv_flags::dontwait)) {
      auto msg = cl::decode(m.data(), m.size());
      if (msg && std::holds_alternative<cl::job>(*msg)) return true;
    }
    return false;
  }, 10000ms);
  REQUIRE(got_job);
  srv.proc().kill(SIGTERM);
  std::optional<klynaa::protocol::reply> rep;
  wait_for([&] {
    rep = c.call(publish_frame("sd-2", "worker.location", location(2)), true, 2000ms);
    return rep && rep->status == reply_status::rejected;
  }, 5000ms);
  REQUIRE(rep);
  CHECK(rep->status == reply_status::rejected);
  CHECK(rep->error->code == "shutting_down");
  CHECK(rep->retry_after_ms.value_or(0) > 0);
  auto code = srv.proc().wait(15000ms);  // grace is 5 s in these tests
  REQUIRE(code);
  CHECK(*code == 0);
}

TEST_CASE("invoke answers timeout when timeout_ms passes first, and the job stays queued", "[ingress][invoke]") {
  klynaa_server srv("broker");  // no node: nothing runs the job
  zmq::context_t ctx;
  raw_client c(ctx, srv.ingress());
  klynaa::protocol::request req;
  req.operation = klynaa::protocol::op::invoke;
  req.id = "inv-1";
  req.type = "processEscrowRelease";
  req.data = {{"pickup_id", 4}, {"release_reason", "admin"}};
  req.timeout_ms = 300;
  auto r = c.call(klynaa::protocol::encode_request(req));
  REQUIRE(r);
  CHECK(r->status == reply_status::timeout);
  CHECK(r->id == std::optional<std::string>("inv-1"));
  // The same id again waits for the same job (no second job).
  auto again = c.call(klynaa::protocol::encode_request(req));
  REQUIRE(again);
  CHECK(again->status == reply_status::timeout);
  // A publish with that id is a duplicate with the invoke's job.
  auto pub = c.call(publish_frame("inv-1", "pickup.confirmed", {{"pickup_id", 4}, {"customer_id", 1}}));
  REQUIRE(pub);
  CHECK(pub->status == reply_status::duplicate);
  CHECK(pub->jobs == std::vector<std::string>{"inv-1#1"});
}
