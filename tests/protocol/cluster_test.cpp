// The cluster-protocol codec (docs/cluster-protocol.md): every message survives a
// round trip, and anything else is rejected with an error, never an exception.
#include "protocol/cluster.hpp"

#include <string>

#include <catch2/catch.hpp>
#include <msgpack.hpp>

namespace cl = klynaa::protocol::cluster;

namespace {

cl::message round_trip(const cl::message& m) {
  auto frame = cl::encode(m);
  std::string error;
  auto back = cl::decode(frame.data(), frame.size(), &error);
  INFO(error);
  REQUIRE(back.has_value());
  REQUIRE(back->index() == m.index());
  return *back;
}

/// A frame from a msgpack map built by hand, for malformed messages.
template <class Fill>
std::string frame_of(uint32_t keys, Fill fill) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(keys);
  fill(pk);
  return std::string{buf.data(), buf.size()};
}

std::string rejection_of(const std::string& frame) {
  std::string error;
  auto m = cl::decode(frame.data(), frame.size(), &error);
  CHECK_FALSE(m.has_value());
  CHECK_FALSE(error.empty());
  return error;
}

}  // namespace

TEST_CASE("ready survives a round trip with its version, kinds and credit") {
  cl::ready r{"node-a", {"notifier", "escrow"}, 12};
  auto frame = cl::encode(r);
  auto back = std::get<cl::ready>(round_trip(r));
  CHECK(back.node == "node-a");
  CHECK(back.kinds == std::vector<std::string>{"notifier", "escrow"});
  CHECK(back.credit == 12);
  // "t" and "v" are on the wire as the spec says.
  auto h = msgpack::unpack(frame.data(), frame.size());
  std::map<std::string, msgpack::object> map;
  h.get().convert(map);
  CHECK(map.at("t").as<std::string>() == "ready");
  CHECK(map.at("v").as<int>() == 1);
}

TEST_CASE("welcome survives a round trip") {
  auto back = std::get<cl::welcome>(round_trip(cl::welcome{250, 4000}));
  CHECK(back.heartbeat_ms == 250);
  CHECK(back.lease_ms == 4000);
}

TEST_CASE("job survives a round trip") {
  cl::job j{"evt-1#1", "sendPushNotification", R"({"user_id":7})", 3, 42, 1700000000123};
  auto back = std::get<cl::job>(round_trip(j));
  CHECK(back.job_id == j.job_id);
  CHECK(back.function == j.function);
  CHECK(back.data_json == j.data_json);
  CHECK(back.attempt == 3);
  CHECK(back.lease == 42);
  CHECK(back.ts_ms == 1700000000123);
  CHECK(back.task_url.empty());
  CHECK(back.task_timeout_ms == 0);
}

TEST_CASE("a task's job carries its url and timeout") {
  cl::job j{"rcpt-1#1", "sendReceiptEmail", R"({"pickup_id":7})", 1, 5, 0};
  j.task_url = "/api/tasks/send-receipt/";
  j.task_timeout_ms = 30000;
  auto back = std::get<cl::job>(round_trip(j));
  CHECK(back.function == "sendReceiptEmail");
  CHECK(back.task_url == "/api/tasks/send-receipt/");
  CHECK(back.task_timeout_ms == 30000);
}

TEST_CASE("done survives a round trip with its children") {
  cl::done d;
  d.job_id = "evt-1#1";
  d.lease = 9;
  d.outcome = "transient";
  d.result_json = "{}";
  d.error_code = "http_503";
  d.error_message = "Django answered 503";
  d.http_status = 503;
  d.retry_after_ms = 2000;
  d.duration_ms = 17;
  d.credit = 1;
  d.children = {{"evt-1#1#1", "sendPushNotification", R"({"a":1})", 0},
                {"#escrow-released-7", "processEscrowRelease", "{}", 1700000086400000}};
  auto back = std::get<cl::done>(round_trip(d));
  CHECK(back.job_id == d.job_id);
  CHECK(back.lease == 9);
  CHECK(back.outcome == "transient");
  CHECK(back.result_json == "{}");
  CHECK(back.error_code == "http_503");
  CHECK(back.error_message == d.error_message);
  CHECK(back.http_status == 503);
  CHECK(back.retry_after_ms == 2000);
  CHECK(back.duration_ms == 17);
  CHECK(back.credit == 1);
  REQUIRE(back.children.size() == 2);
  CHECK(back.children[1].job_id == "#escrow-released-7");
  CHECK(back.children[1].function == "processEscrowRelease");
  CHECK(back.children[1].due_ms == 1700000086400000);
  CHECK(back.children[0].data_json == R"({"a":1})");
}

TEST_CASE("credit, heartbeat, bye and node_stats survive a round trip") {
  CHECK(std::get<cl::credit>(round_trip(cl::credit{3})).n == 3);
  CHECK(std::get<cl::heartbeat>(round_trip(cl::heartbeat{})).leases.empty());
  CHECK(std::get<cl::heartbeat>(round_trip(cl::heartbeat{{7, 9, 1LL << 40}})).leases ==
        std::vector<int64_t>{7, 9, 1LL << 40});
  CHECK(std::get<cl::bye>(round_trip(cl::bye{{"a", "b"}, ""})).jobs == std::vector<std::string>{"a", "b"});
  CHECK(std::get<cl::bye>(round_trip(cl::bye{{}, "standby"})).reason == "standby");
  CHECK(std::get<cl::bye>(round_trip(cl::bye{})).reason.empty());
  CHECK(std::get<cl::bye>(round_trip(cl::bye{})).jobs.empty());
  CHECK(std::get<cl::node_stats>(round_trip(cl::node_stats{R"({"held":1})"})).json == R"({"held":1})");
}

TEST_CASE("name_of gives each message its wire name") {
  CHECK(std::string{cl::name_of(cl::ready{})} == "ready");
  CHECK(std::string{cl::name_of(cl::welcome{})} == "welcome");
  CHECK(std::string{cl::name_of(cl::job{})} == "job");
  CHECK(std::string{cl::name_of(cl::done{})} == "done");
  CHECK(std::string{cl::name_of(cl::credit{})} == "credit");
  CHECK(std::string{cl::name_of(cl::heartbeat{})} == "heartbeat");
  CHECK(std::string{cl::name_of(cl::bye{})} == "bye");
  CHECK(std::string{cl::name_of(cl::node_stats{})} == "node_stats");
  CHECK(std::string{cl::name_of(cl::withdraw{})} == "withdraw");
  CHECK(std::string{cl::name_of(cl::batch{})} == "batch");
}

TEST_CASE("withdraw survives a round trip, and a negative credit is refused") {
  auto w = std::get<cl::withdraw>(round_trip(cl::withdraw{{"escrow"}, "10 restarts in 60 s", 4, {"j1", "j2"}}));
  CHECK(w.kinds == std::vector<std::string>{"escrow"});
  CHECK(w.reason == "10 restarts in 60 s");
  CHECK(w.credit == 4);
  CHECK(w.jobs == std::vector<std::string>{"j1", "j2"});
  auto frame = cl::encode(cl::withdraw{{"escrow"}, "x", -1, {}});
  std::string err;
  CHECK(!cl::decode(frame.data(), frame.size(), &err));
  CHECK(err.find("credit") != std::string::npos);
}

TEST_CASE("a done without its optional keys decodes with their defaults") {
  auto frame = frame_of(4, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"done"});
    pk.pack(std::string{"job_id"}), pk.pack(std::string{"j"});
    pk.pack(std::string{"lease"}), pk.pack(5);
    pk.pack(std::string{"outcome"}), pk.pack(std::string{"ok"});
  });
  auto m = cl::decode(frame.data(), frame.size());
  REQUIRE(m.has_value());
  auto d = std::get<cl::done>(*m);
  CHECK(d.http_status == 0);
  CHECK(d.retry_after_ms == -1);
  CHECK(d.children.empty());
}

TEST_CASE("an integer sent as a whole float is accepted") {
  auto frame = frame_of(2, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"credit"});
    pk.pack(std::string{"n"}), pk.pack(2.0);
  });
  auto m = cl::decode(frame.data(), frame.size());
  REQUIRE(m.has_value());
  CHECK(std::get<cl::credit>(*m).n == 2);
}

TEST_CASE("unknown keys are ignored so that a newer peer may add some") {
  auto frame = frame_of(3, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"credit"});
    pk.pack(std::string{"n"}), pk.pack(1);
    pk.pack(std::string{"future"}), pk.pack(true);
  });
  CHECK(cl::decode(frame.data(), frame.size()).has_value());
}

TEST_CASE("garbage bytes are rejected without an exception") {
  const std::string samples[] = {
      std::string{"\xc1", 1},                 // reserved byte
      std::string{"\x81\xa1", 2},             // truncated map
      std::string{"hello world"},             // not msgpack of a map
      std::string{"\x93\x01\x02\x03", 4},     // an array, not a map
      std::string{"\xdd\xff\xff\xff\xff", 5}, // an array claiming 4 billion elements
      std::string{"\xdf\xff\xff\xff\xff", 5}, // a map claiming 4 billion pairs
  };
  for (const auto& s : samples)
    rejection_of(s);
  std::string error;
  CHECK_FALSE(cl::decode(nullptr, 0, &error).has_value());
  CHECK(error == "empty frame");
}

TEST_CASE("trailing bytes after a message are rejected") {
  auto frame = cl::encode(cl::heartbeat{}) + "x";
  CHECK(rejection_of(frame) == "trailing bytes after the message");
}

TEST_CASE("an unknown message type is rejected") {
  auto frame = frame_of(1, [](auto& pk) { pk.pack(std::string{"t"}), pk.pack(std::string{"launch"}); });
  CHECK(rejection_of(frame) == "unknown message type \"launch\"");
}

TEST_CASE("a map without t is rejected") {
  auto frame = frame_of(1, [](auto& pk) { pk.pack(std::string{"n"}), pk.pack(1); });
  CHECK(rejection_of(frame) == "t is missing");
}

TEST_CASE("a missing required key is rejected naming the key") {
  auto frame = frame_of(2, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"job"});
    pk.pack(std::string{"job_id"}), pk.pack(std::string{"j"});
  });
  CHECK(rejection_of(frame) == "function is missing");
}

TEST_CASE("an ill-typed key is rejected naming the key") {
  auto frame = frame_of(2, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"credit"});
    pk.pack(std::string{"n"}), pk.pack(std::string{"two"});
  });
  CHECK(rejection_of(frame) == "n must be an integer");
  auto leases = frame_of(2, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"heartbeat"});
    pk.pack(std::string{"leases"}), pk.pack_array(2), pk.pack(1), pk.pack(std::string{"2"});
  });
  CHECK(rejection_of(leases) == "leases must be an array of integers");
}

TEST_CASE("a ready of another protocol version is rejected") {
  auto frame = frame_of(5, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"ready"});
    pk.pack(std::string{"v"}), pk.pack(2);
    pk.pack(std::string{"node"}), pk.pack(std::string{"n"});
    pk.pack(std::string{"kinds"}), pk.pack_array(0);
    pk.pack(std::string{"credit"}), pk.pack(1);
  });
  CHECK(rejection_of(frame).find("unsupported version 2") == 0);
}

TEST_CASE("a done without credit grants none, and a negative credit is rejected") {
  cl::done d;
  d.job_id = "j";
  d.outcome = "ok";
  CHECK(std::get<cl::done>(round_trip(d)).credit == 0);
  d.credit = -1;
  CHECK(rejection_of(cl::encode(d)).find("credit") == 0);
}

TEST_CASE("a done with an unknown outcome is rejected") {
  cl::done d;
  d.job_id = "j";
  d.outcome = "maybe";
  auto frame = cl::encode(d);
  CHECK(rejection_of(frame).find("outcome") == 0);
}

TEST_CASE("a done with an ill-typed child is rejected naming the child") {
  auto good = frame_of(4, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"done"});
    pk.pack(std::string{"job_id"}), pk.pack(std::string{"j"});
    pk.pack(std::string{"outcome"}), pk.pack(std::string{"ok"});
    pk.pack(std::string{"lease"}), pk.pack(1);
  });
  CHECK(cl::decode(good.data(), good.size()).has_value());
  auto bad_child = frame_of(5, [](auto& pk) {
    pk.pack(std::string{"t"}), pk.pack(std::string{"done"});
    pk.pack(std::string{"job_id"}), pk.pack(std::string{"j"});
    pk.pack(std::string{"outcome"}), pk.pack(std::string{"ok"});
    pk.pack(std::string{"lease"}), pk.pack(1);
    pk.pack(std::string{"children"}), pk.pack_array(1);
    pk.pack_map(3);
    pk.pack(std::string{"job_id"}), pk.pack(std::string{"c"});
    pk.pack(std::string{"function"}), pk.pack(std::string{"f"});
    pk.pack(std::string{"data_json"}), pk.pack(7);
  });
  CHECK(rejection_of(bad_child) == "children.0.data_json must be a string");
}

TEST_CASE("a welcome with a non-positive heartbeat is rejected") {
  auto frame = cl::encode(cl::welcome{0, 1000});
  CHECK(rejection_of(frame) == "heartbeat_ms must be positive");
}

TEST_CASE("ready and welcome carry batch, and a peer that leaves it out takes no batches") {
  CHECK(std::get<cl::ready>(round_trip(cl::ready{"a", {"geo"}, 4, true})).batch);
  CHECK_FALSE(std::get<cl::ready>(round_trip(cl::ready{"a", {"geo"}, 4, false})).batch);
  CHECK(std::get<cl::welcome>(round_trip(cl::welcome{250, 4000, true})).batch);
  // An older peer's READY and WELCOME, without the key:
  auto ready = frame_of(5, [](auto& pk) {
    pk.pack(std::string("t")), pk.pack(std::string("ready")), pk.pack(std::string("v")), pk.pack(1);
    pk.pack(std::string("node")), pk.pack(std::string("old"));
    pk.pack(std::string("kinds")), pk.pack(std::vector<std::string>{"geo"});
    pk.pack(std::string("credit")), pk.pack(3);
  });
  auto r = cl::decode(ready.data(), ready.size());
  REQUIRE(r);
  CHECK_FALSE(std::get<cl::ready>(*r).batch);
  auto welcome = frame_of(3, [](auto& pk) {
    pk.pack(std::string("t")), pk.pack(std::string("welcome"));
    pk.pack(std::string("heartbeat_ms")), pk.pack(100), pk.pack(std::string("lease_ms")), pk.pack(1000);
  });
  auto w = cl::decode(welcome.data(), welcome.size());
  REQUIRE(w);
  CHECK_FALSE(std::get<cl::welcome>(*w).batch);
}

TEST_CASE("a batch carries whole encoded messages in order") {
  cl::job j{"p-1#1", "sendPickupNotification", R"({"pickup_id":1})", 1, 42, 7};
  cl::done d;
  d.job_id = "p-2#1";
  d.lease = 43;
  d.outcome = "ok";
  d.credit = 1;
  const std::vector<std::string> frames{cl::encode(j), cl::encode(d), cl::encode(cl::credit{2})};
  const auto frame = cl::encode_batch(frames);
  CHECK(frame == cl::encode(cl::batch{frames}));  // the two encoders agree
  std::string error;
  auto back = cl::decode(frame.data(), frame.size(), &error);
  INFO(error);
  REQUIRE(back);
  REQUIRE(std::holds_alternative<cl::batch>(*back));
  CHECK(cl::name_of(*back) == std::string("batch"));
  auto& inner = std::get<cl::batch>(*back).frames;
  REQUIRE(inner == frames);
  auto first = cl::decode(inner[0].data(), inner[0].size());
  REQUIRE(first);
  CHECK(std::get<cl::job>(*first).lease == 42);
  auto second = cl::decode(inner[1].data(), inner[1].size());
  REQUIRE(second);
  CHECK(std::get<cl::done>(*second).job_id == "p-2#1");
}

TEST_CASE("a batch whose frames are not binary, or that holds too many, is rejected naming frames") {
  auto strings = frame_of(2, [](auto& pk) {
    pk.pack(std::string("t")), pk.pack(std::string("batch"));
    pk.pack(std::string("frames")), pk.pack(std::vector<std::string>{"x"});
  });
  CHECK(rejection_of(strings).find("frames") != std::string::npos);
  auto missing = frame_of(1, [](auto& pk) { pk.pack(std::string("t")), pk.pack(std::string("batch")); });
  CHECK(rejection_of(missing).find("frames is missing") != std::string::npos);
  const std::vector<std::string> too_many(cl::max_batch + 1, cl::encode(cl::heartbeat{}));
  CHECK(rejection_of(cl::encode_batch(too_many)).find("frames holds more than") != std::string::npos);
  const std::vector<std::string> most(cl::max_batch, cl::encode(cl::heartbeat{}));
  auto ok = cl::encode_batch(most);
  CHECK(cl::decode(ok.data(), ok.size()));
}
