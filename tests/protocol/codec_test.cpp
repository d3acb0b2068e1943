// The ingress codec, framing: a request's frame, its size, msgpack that is
// malformed, truncated, hostile or too deep (docs/ingress-protocol.md, "Checks, in order").
#include "codec_support.hpp"

using namespace klynaa::protocol;
using namespace klynaa::protocol::test;

// ---- a valid request ----------------------------------------------------------

TEST_CASE("a valid publish decodes into a request carrying id, type, ts and data") {
  auto j = publish("pickup.created", pickup_created_data());
  j["ts"] = 1699999999000;
  const auto d = decode(j);
  const auto& r = accepted(d);
  CHECK(r.operation == op::publish);
  CHECK(r.id == "evt-1");
  CHECK(r.type == "pickup.created");
  CHECK(r.ts_ms == 1699999999000);
  CHECK(r.data == pickup_created_data());
  REQUIRE(d.id);
  CHECK(*d.id == "evt-1");
}

TEST_CASE("a request without op is a publish") {
  const auto& r = accepted(decode(publish("pickup.confirmed", {{"pickup_id", 7}, {"customer_id", 3}})));
  CHECK(r.operation == op::publish);
}

TEST_CASE("an op sent as nil counts as absent and means publish") {
  auto j = publish("pickup.confirmed", {{"pickup_id", 7}, {"customer_id", 3}});
  j["op"] = nullptr;
  CHECK(accepted(decode(j)).operation == op::publish);
}

TEST_CASE("a request without ts takes the time received") {
  const auto& r = accepted(decode(publish("pickup.confirmed", {{"pickup_id", 7}, {"customer_id", 3}})));
  CHECK(r.ts_ms == test_now_ms);
}

TEST_CASE("an invoke decodes with its timeout_ms, 30000 by default") {
  auto j = invoke("cleanupData", json::object());
  const auto& r = accepted(decode(j));
  CHECK(r.operation == op::invoke);
  CHECK(r.type == "cleanupData");
  CHECK(r.timeout_ms == 30000);
  j["timeout_ms"] = 1500;
  CHECK(accepted(decode(j)).timeout_ms == 1500);
}

TEST_CASE("publish takes function names as well as event types") {
  const auto& r = accepted(decode(publish("processEscrowRelease",
                                          {{"pickup_id", 9}, {"release_reason", "admin"}})));
  CHECK(r.type == "processEscrowRelease");
}

TEST_CASE("a ping needs nothing but v") {
  const auto& r = accepted(decode(json{{"v", 1}, {"op", "ping"}}));
  CHECK(r.operation == op::ping);
  CHECK(r.id.empty());
}

TEST_CASE("a ping ignores an invalid id, type and data but echoes a string id") {
  const auto d = decode(json{{"v", 1}, {"op", "ping"}, {"id", "bad id!"}, {"type", 5}, {"data", 3}});
  CHECK(accepted(d).operation == op::ping);
  REQUIRE(d.id);
  CHECK(*d.id == "bad id!");
}

TEST_CASE("a ping still checks v") {
  rejected(decode(json{{"op", "ping"}}), "missing_field", "v");
  rejected(decode(json{{"v", 2}, {"op", "ping"}}), "unsupported_version", "v");
}

// ---- frames and size ------------------------------------------------------------

TEST_CASE("a frame over max_bytes is too_large with a nil id, even when it holds a valid id") {
  const auto f = frame(publish("pickup.created", pickup_created_data()));
  const auto d = decode(f, f.size() - 1);
  const auto e = rejected(d, "too_large");
  CHECK_FALSE(d.id);
  CHECK(e.field.empty());
  CHECK(e.message.find(std::to_string(f.size())) != std::string::npos);
}

TEST_CASE("a frame of exactly max_bytes is decoded") {
  const auto f = frame(publish("pickup.created", pickup_created_data()));
  accepted(decode(f, f.size()));
}

TEST_CASE("too_large is checked before the bytes are decoded") {
  const std::string garbage(100, '\xc1');
  rejected(decode(garbage, 99), "too_large");
  rejected(decode(garbage, 100), "malformed");
}

// ---- msgpack decoding -----------------------------------------------------------

TEST_CASE("an empty frame is malformed") {
  const auto d = decode(std::string{});
  rejected(d, "malformed");
  CHECK_FALSE(d.id);
}

TEST_CASE("bytes that are not msgpack are malformed") {
  rejected(decode(std::string("\xc1", 1)), "malformed");
  rejected(decode(std::string("{\"v\": 1}")), "malformed");
}

TEST_CASE("a truncated map is malformed and its id is not echoed") {
  auto f = frame(publish("pickup.created", pickup_created_data()));
  f.pop_back();
  const auto d = decode(f);
  rejected(d, "malformed");
  CHECK_FALSE(d.id);
}

TEST_CASE("trailing bytes after the map are malformed") {
  const auto f = frame(publish("pickup.created", pickup_created_data()));
  rejected(decode(f + std::string(1, '\0')), "malformed");
  rejected(decode(f + "garbage"), "malformed");
}

TEST_CASE("two maps in one frame are malformed") {
  const auto f = frame(publish("pickup.created", pickup_created_data()));
  const auto d = decode(f + f);
  rejected(d, "malformed");
  CHECK_FALSE(d.id);
}

TEST_CASE("a top level that is not a map is malformed") {
  rejected(decode(frame(json::array({1, "evt-1"}))), "malformed");
  rejected(decode(frame(json("evt-1"))), "malformed");
  rejected(decode(frame(json(1))), "malformed");
  rejected(decode(frame(json(nullptr))), "malformed");
  rejected(decode(frame_with([](packer& pk) { pk.pack_bin(2); pk.pack_bin_body("ab", 2); })),
           "malformed");
}

TEST_CASE("a non-string top-level key is malformed, and a string id is still echoed") {
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(5);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "evt-9");
    pack_str(pk, "type");
    pack_str(pk, "pickup.confirmed");
    pack_str(pk, "data");
    pack(pk, json{{"pickup_id", 7}, {"customer_id", 3}});
    pk.pack(7);  // an integer key
    pk.pack(true);
  });
  const auto d = decode(f);
  rejected(d, "malformed");
  REQUIRE(d.id);
  CHECK(*d.id == "evt-9");
}

TEST_CASE("a repeated top-level key is malformed") {
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(5);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "evt-1");
    pack_str(pk, "type");
    pack_str(pk, "pickup.confirmed");
    pack_str(pk, "data");
    pack(pk, json{{"pickup_id", 7}, {"customer_id", 3}});
    pack_str(pk, "type");
    pack_str(pk, "pickup.created");
  });
  rejected(decode(f), "malformed");
}

TEST_CASE("nesting of exactly 32 levels is accepted") {
  const auto d = decode(nested_frame(32, false));
  const auto& r = accepted(d);
  // 30 arrays below data, 42 in the innermost.
  const json* p = &r.data["deep"];
  for (int i = 0; i < 29; ++i) {
    REQUIRE(p->is_array());
    p = &(*p)[0];
  }
  CHECK(*p == json::array({42}));
  accepted(decode(nested_frame(32, true)));
}

TEST_CASE("nesting of 33 levels is malformed, even when the innermost container is empty") {
  rejected(decode(nested_frame(33, false)), "malformed");
  rejected(decode(nested_frame(33, true)), "malformed");
}

TEST_CASE("deep nesting of maps counts like arrays") {
  auto make = [](int levels) {
    json inner = json::object();
    for (int i = 3; i < levels; ++i)
      inner = json{{"x", inner}};
    json data = {{"deep", inner}};
    return decode(json{{"v", 1}, {"id", "m-1"}, {"type", "cleanupData"}, {"data", data}});
  };
  accepted(make(32));
  rejected(make(33), "malformed");
}

TEST_CASE("a deeply nested hostile frame is malformed without exhausting the stack") {
  std::string f(100000, '\x91');  // 100000 nested one-element arrays
  f += '\x01';
  rejected(decode(f), "malformed");
}

TEST_CASE("a container claiming 2^32-1 elements it does not hold is malformed without allocating them") {
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "evt-1");
    pack_str(pk, "type");
    pack_str(pk, "cleanupData");
    pack_str(pk, "data");
    pk.pack_map(1);
    pack_str(pk, "x");
    pk.pack_array(0xffffffffu);
    pk.pack_array(0xffffffffu);
    pk.pack_map(0xffffffffu);
  });
  const auto d = decode(f);
  rejected(d, "malformed");
  CHECK_FALSE(d.id);
}

TEST_CASE("a string claiming more bytes than the frame holds is malformed") {
  std::string f = frame_with([](packer& pk) {
    pk.pack_map(1);
    pack_str(pk, "v");
    pk.pack_str(0xffffffu);
  });
  f += "abc";
  rejected(decode(f), "malformed");
}

// ---- v --------------------------------------------------------------------------
