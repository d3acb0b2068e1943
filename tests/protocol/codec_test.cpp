// The ingress codec: framing, the check order of contract §1, the id echo rule,
// the top-level keys, data conversion, and reply/request encoding.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <limits>

#include "frames.hpp"
#include "protocol/message.hpp"
#include "protocol/msgpack_json.hpp"
#include "protocol/version.hpp"

using namespace klynaa::protocol;
using namespace klynaa::protocol::test;

namespace {

// Asserts a rejection with `code` (and `field` when given); returns the error.
error_info rejected(const decoded& d, std::string_view code, std::string_view field = {}) {
  REQUIRE_FALSE(d.req);
  REQUIRE(d.error);
  CHECK(d.error->code == code);
  if (!field.empty())
    CHECK(d.error->field == field);
  CHECK_FALSE(d.error->message.empty());
  return *d.error;
}

request accepted(const decoded& d) {
  if (d.error)
    FAIL("rejected: " << d.error->code << " " << d.error->field << ": " << d.error->message);
  REQUIRE(d.req);
  return *d.req;
}

// A map with `n` levels of nesting in total: the top-level request map (level 1),
// `data` (level 2), then n - 2 arrays under data.deep; the innermost is empty
// when `empty_innermost`.
std::string nested_frame(int n, bool empty_innermost) {
  return frame_with([&](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "deep-1");
    pack_str(pk, "type");
    pack_str(pk, "cleanupData");
    pack_str(pk, "data");
    pk.pack_map(1);
    pack_str(pk, "deep");
    for (int level = 3; level <= n; ++level)
      pk.pack_array(level == n && empty_innermost ? 0 : 1);
    if (!empty_innermost)
      pk.pack(42);
  });
}

}  // namespace

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

TEST_CASE("a missing v is missing_field") {
  auto j = publish("pickup.created", pickup_created_data());
  j.erase("v");
  const auto d = decode(j);
  rejected(d, "missing_field", "v");
  REQUIRE(d.id);
  CHECK(*d.id == "evt-1");
}

TEST_CASE("a nil v is missing_field") {
  auto j = publish("pickup.created", pickup_created_data());
  j["v"] = nullptr;
  rejected(decode(j), "missing_field", "v");
}

TEST_CASE("a v that is not an integer is invalid_field") {
  for (const json& v : {json("1"), json(1.0), json(true), json::array({1}), json::object()}) {
    auto j = publish("pickup.created", pickup_created_data());
    j["v"] = v;
    INFO("v = " << v.dump());
    rejected(decode(j), "invalid_field", "v");
  }
}

TEST_CASE("an integer v other than 1 is unsupported_version") {
  for (const json& v : {json(2), json(0), json(-1), json(std::numeric_limits<uint64_t>::max())}) {
    auto j = publish("pickup.created", pickup_created_data());
    j["v"] = v;
    INFO("v = " << v.dump());
    const auto d = decode(j);
    rejected(d, "unsupported_version", "v");
    REQUIRE(d.id);
    CHECK(*d.id == "evt-1");
  }
}

// ---- op -------------------------------------------------------------------------

TEST_CASE("an op other than publish, invoke or ping is invalid_field") {
  for (const json& o : {json("PUBLISH"), json("call"), json(""), json(1), json(true)}) {
    auto j = publish("pickup.created", pickup_created_data());
    j["op"] = o;
    INFO("op = " << o.dump());
    rejected(decode(j), "invalid_field", "op");
  }
}

// ---- id -------------------------------------------------------------------------

TEST_CASE("a missing or nil id is missing_field") {
  auto j = publish("pickup.created", pickup_created_data());
  j.erase("id");
  auto d = decode(j);
  rejected(d, "missing_field", "id");
  CHECK_FALSE(d.id);
  j["id"] = nullptr;
  d = decode(j);
  rejected(d, "missing_field", "id");
  CHECK_FALSE(d.id);
}

TEST_CASE("an id that is not a string is invalid_field and not echoed") {
  for (const json& id : {json(7), json(7.5), json(true), json::array({"a"})}) {
    auto j = publish("pickup.created", pickup_created_data());
    j["id"] = id;
    const auto d = decode(j);
    rejected(d, "invalid_field", "id");
    CHECK_FALSE(d.id);
  }
}

TEST_CASE("an empty id is invalid_field and echoed as empty") {
  auto j = publish("pickup.created", pickup_created_data());
  j["id"] = "";
  const auto d = decode(j);
  rejected(d, "invalid_field", "id");
  REQUIRE(d.id);
  CHECK(d.id->empty());
}

TEST_CASE("an id of 128 characters is accepted, 129 is invalid_field") {
  auto j = publish("pickup.created", pickup_created_data());
  j["id"] = std::string(128, 'a');
  CHECK(accepted(decode(j)).id == std::string(128, 'a'));
  j["id"] = std::string(129, 'a');
  const auto d = decode(j);
  rejected(d, "invalid_field", "id");
  REQUIRE(d.id);
  CHECK(*d.id == std::string(129, 'a'));
}

TEST_CASE("an id may use every character of A-Z a-z 0-9 . _ : -") {
  auto j = publish("pickup.created", pickup_created_data());
  const std::string all = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";
  j["id"] = all;
  CHECK(accepted(decode(j)).id == all);
}

TEST_CASE("an id with a character outside the alphabet is invalid_field and echoed") {
  for (const std::string& id : std::vector<std::string>{"evt/1", "evt 1", "evt#1",
                                                        "#escrow-released-7", "évt", "a\nb",
                                                        std::string("a\0b", 3)}) {
    auto j = publish("pickup.created", pickup_created_data());
    j["id"] = id;
    INFO("id = " << json(id).dump(-1, ' ', true, json::error_handler_t::replace));
    const auto d = decode(j);
    const auto e = rejected(d, "invalid_field", "id");
    REQUIRE(d.id);
    CHECK(*d.id == id);
  }
}

TEST_CASE("an invalid id names the offending character and its position") {
  auto j = publish("pickup.created", pickup_created_data());
  j["id"] = "evt/1";
  const auto e = rejected(decode(j), "invalid_field", "id");
  CHECK(e.message.find("\"/\" at position 4") != std::string::npos);
}

// ---- type -----------------------------------------------------------------------

TEST_CASE("a missing type is missing_field") {
  auto j = publish("pickup.created", pickup_created_data());
  j.erase("type");
  rejected(decode(j), "missing_field", "type");
  j["type"] = nullptr;
  rejected(decode(j), "missing_field", "type");
}

TEST_CASE("a type that is not a string is invalid_field") {
  auto j = publish("pickup.created", pickup_created_data());
  j["type"] = 3;
  rejected(decode(j), "invalid_field", "type");
}

TEST_CASE("an unknown type is unknown_type, and the id is echoed") {
  for (const std::string t : {"pickup.exploded", "Pickup.Created", "sendpickupnotification", ""}) {
    auto j = publish(t, json::object());
    INFO("type = " << t);
    const auto d = decode(j);
    const auto e = rejected(d, "unknown_type", "type");
    REQUIRE(d.id);
    CHECK(*d.id == "evt-1");
    CHECK(e.message.find("pickup.created") != std::string::npos);  // lists what is known
  }
}

TEST_CASE("invoke with an event type is unknown_type saying invoke takes function names") {
  const auto e = rejected(decode(invoke("pickup.created", pickup_created_data())),
                          "unknown_type", "type");
  CHECK(e.message.find("invoke takes a function name") != std::string::npos);
}

TEST_CASE("invoke with an unknown name is unknown_type listing the functions") {
  const auto e = rejected(decode(invoke("sendEmail", json::object())), "unknown_type", "type");
  CHECK(e.message.find("sendPickupNotification") != std::string::npos);
}

// ---- ts -------------------------------------------------------------------------

TEST_CASE("ts must be a non-negative integer of milliseconds") {
  for (const json& ts : {json(1.5), json(1700000000000.0), json(-1), json("1700000000000"),
                         json(true), json(std::numeric_limits<uint64_t>::max())}) {
    auto j = publish("pickup.created", pickup_created_data());
    j["ts"] = ts;
    INFO("ts = " << ts.dump());
    rejected(decode(j), "invalid_field", "ts");
  }
}

TEST_CASE("ts 0 and a nil ts are accepted") {
  auto j = publish("pickup.created", pickup_created_data());
  j["ts"] = 0;
  CHECK(accepted(decode(j)).ts_ms == 0);
  j["ts"] = nullptr;
  CHECK(accepted(decode(j)).ts_ms == test_now_ms);
}

// ---- data -----------------------------------------------------------------------

TEST_CASE("a missing or nil data is missing_field") {
  auto j = publish("cleanupData", json::object());
  j.erase("data");
  rejected(decode(j), "missing_field", "data");
  j["data"] = nullptr;
  rejected(decode(j), "missing_field", "data");
}

TEST_CASE("data that is not a map is invalid_field") {
  for (const json& data : {json::array(), json("x"), json(1), json(false)}) {
    INFO("data = " << data.dump());
    rejected(decode(publish("cleanupData", data)), "invalid_field", "data");
  }
}

TEST_CASE("an empty data map is accepted where no field is required") {
  CHECK(accepted(decode(publish("generateDailyReport", json::object()))).data == json::object());
}

TEST_CASE("unknown extra fields are kept with their types") {
  auto data = pickup_created_data();
  data["note"] = "ring twice";
  data["count"] = 3;
  data["delta"] = -4;
  data["ratio"] = 0.25;
  data["flag"] = false;
  data["nothing"] = nullptr;
  data["list"] = json::array({1, "two", 3.5, json::array(), json::object()});
  data["nested"] = {{"a", {{"b", "c"}}}};
  const auto& r = accepted(decode(publish("pickup.created", data)));
  CHECK(r.data == data);
  CHECK(r.data["count"].is_number_integer());
  CHECK(r.data["delta"].get<int64_t>() == -4);
  CHECK(r.data["ratio"].is_number_float());
  CHECK(r.data["nothing"].is_null());
}

TEST_CASE("a known optional field sent as nil is treated as absent and dropped") {
  auto data = pickup_created_data();
  data["radius_km"] = nullptr;
  data["waste_type"] = nullptr;
  const auto& r = accepted(decode(publish("pickup.created", data)));
  CHECK_FALSE(r.data.contains("radius_km"));
  CHECK_FALSE(r.data.contains("waste_type"));
  CHECK(r.data == pickup_created_data());
}

TEST_CASE("binary data inside data is invalid_field naming its path") {
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
    pack_str(pk, "blob");
    pk.pack_map(1);
    pack_str(pk, "inner");
    pk.pack_bin(3);
    pk.pack_bin_body("abc", 3);
  });
  const auto d = decode(f);
  rejected(d, "invalid_field", "data.blob.inner");
  REQUIRE(d.id);
  CHECK(*d.id == "evt-1");
}

TEST_CASE("an extension value inside data is invalid_field naming its path") {
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
    pack_str(pk, "list");
    pk.pack_array(2);
    pk.pack(1);
    pk.pack_ext(2, 5);
    pk.pack_ext_body("ab", 2);
  });
  rejected(decode(f), "invalid_field", "data.list.1");
}

TEST_CASE("a non-string key inside data is invalid_field") {
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
    pk.pack(5);
    pack_str(pk, "five");
  });
  rejected(decode(f), "invalid_field", "data");
}

TEST_CASE("a repeated key inside data is invalid_field") {
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "evt-1");
    pack_str(pk, "type");
    pack_str(pk, "cleanupData");
    pack_str(pk, "data");
    pk.pack_map(2);
    pack_str(pk, "older_than_days");
    pk.pack(5);
    pack_str(pk, "older_than_days");
    pk.pack(500);
  });
  rejected(decode(f), "invalid_field", "data.older_than_days");
}

TEST_CASE("text inside data that is not valid UTF-8 is invalid_field") {
  auto data = pickup_created_data();
  data["note"] = std::string("caf\xc3", 4);
  rejected(decode(publish("pickup.created", data)), "invalid_field", "data.note");
}

TEST_CASE("a NaN or infinite number inside extra data is invalid_field") {
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    auto data = pickup_created_data();
    data["score"] = bad;
    rejected(decode(publish("pickup.created", data)), "invalid_field", "data.score");
  }
}

TEST_CASE("float32 values are accepted and widened") {
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "evt-1");
    pack_str(pk, "type");
    pack_str(pk, "worker.location");
    pack_str(pk, "data");
    pk.pack_map(4);
    pack_str(pk, "worker_id");
    pk.pack(3);
    pack_str(pk, "lat");
    pk.pack_float(1.5f);
    pack_str(pk, "lng");
    pk.pack_float(-2.25f);
    pack_str(pk, "available");
    pk.pack(true);
  });
  const auto& r = accepted(decode(f));
  CHECK(r.data["lat"].get<double>() == 1.5);
  CHECK(r.data["lng"].get<double>() == -2.25);
}

// ---- timeout_ms -----------------------------------------------------------------

TEST_CASE("an invoke's timeout_ms must be a positive integer of at most 24 hours") {
  for (const json& t : {json(0), json(-5), json(1.5), json(1000.0), json("1000"), json(true),
                        json(86400001)}) {
    auto j = invoke("cleanupData", json::object());
    j["timeout_ms"] = t;
    INFO("timeout_ms = " << t.dump());
    rejected(decode(j), "invalid_field", "timeout_ms");
  }
  auto j = invoke("cleanupData", json::object());
  j["timeout_ms"] = 86400000;
  CHECK(accepted(decode(j)).timeout_ms == 86400000);
}

TEST_CASE("a publish ignores timeout_ms") {
  auto j = publish("cleanupData", json::object());
  j["timeout_ms"] = "whatever";
  accepted(decode(j));
}

TEST_CASE("unknown top-level keys are ignored") {
  auto j = publish("cleanupData", json::object());
  j["trace"] = {{"span", 1}};
  accepted(decode(j));
}

// ---- check order ----------------------------------------------------------------

TEST_CASE("checks run in the order frames, msgpack, v, op, id, type, ts, data, timeout_ms") {
  // Each case breaks one check and every later one; the answer names the first.
  json all_bad = {{"v", 2}, {"op", "jump"}, {"id", "bad id"}, {"type", "nope"},
                  {"ts", -1}, {"data", 5}};
  rejected(decode(all_bad), "unsupported_version", "v");
  all_bad["v"] = 1;
  rejected(decode(all_bad), "invalid_field", "op");
  all_bad["op"] = "invoke";
  rejected(decode(all_bad), "invalid_field", "id");
  all_bad["id"] = "ok-1";
  rejected(decode(all_bad), "unknown_type", "type");
  all_bad["type"] = "cleanupData";
  rejected(decode(all_bad), "invalid_field", "ts");
  all_bad["ts"] = 5;
  rejected(decode(all_bad), "invalid_field", "data");
  all_bad["data"] = {{"older_than_days", -1}};
  all_bad["timeout_ms"] = 0;
  rejected(decode(all_bad), "invalid_field", "data.older_than_days");
  all_bad["data"] = json::object();
  rejected(decode(all_bad), "invalid_field", "timeout_ms");
  all_bad["timeout_ms"] = 10;
  accepted(decode(all_bad));
}

TEST_CASE("a request with both a bad v and a bad id answers on v") {
  const auto d = decode(json{{"v", "one"}, {"id", 5}, {"type", "pickup.created"}, {"data", 1}});
  rejected(d, "invalid_field", "v");
}

TEST_CASE("a too large frame answers too_large before anything else") {
  const std::string f = frame(json{{"v", 9}});
  rejected(decode(f, 1), "too_large");
}

TEST_CASE("a data field error comes before converting the rest of data") {
  // A missing required field is reported before binary data in an extra field.
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "evt-1");
    pack_str(pk, "type");
    pack_str(pk, "pickup.confirmed");
    pack_str(pk, "data");
    pk.pack_map(2);
    pack_str(pk, "blob");
    pk.pack_bin(1);
    pk.pack_bin_body("x", 1);
    pack_str(pk, "pickup_id");
    pk.pack(7);
  });
  rejected(decode(f), "missing_field", "data.customer_id");
}

// ---- messages -------------------------------------------------------------------

TEST_CASE("rejection messages are sentences that say what was expected and what arrived") {
  auto data = pickup_created_data();
  data["lat"] = 91.5;
  auto e = rejected(decode(publish("pickup.created", data)), "invalid_field", "data.lat");
  CHECK(e.message == "data.lat must be a number between -90 and 90, got 91.5");

  data = pickup_created_data();
  data["pickup_id"] = 7.0;
  e = rejected(decode(publish("pickup.created", data)), "invalid_field", "data.pickup_id");
  CHECK(e.message == "data.pickup_id must be a positive integer, got 7.0");

  auto j = publish("pickup.created", pickup_created_data());
  j["v"] = 3;
  e = rejected(decode(j), "unsupported_version", "v");
  CHECK(e.message == "protocol version 3 is not supported; send v=1");
}

// ---- reply encoding -------------------------------------------------------------

namespace {

// The keys of an encoded reply, read back with msgpack-cxx directly.
std::vector<std::string> keys_of(const std::string& f) {
  auto h = msgpack::unpack(f.data(), f.size());
  const auto& o = h.get();
  REQUIRE(o.type == msgpack::type::MAP);
  std::vector<std::string> keys;
  for (uint32_t i = 0; i < o.via.map.size; ++i)
    keys.push_back(o.via.map.ptr[i].key.as<std::string>());
  std::sort(keys.begin(), keys.end());
  return keys;
}

json reply_as_json(const std::string& f) {
  return json::from_msgpack(f);
}

}  // namespace

TEST_CASE("an accepted reply carries v, id, status and jobs only") {
  reply r;
  r.id = "evt-1";
  r.status = reply_status::accepted;
  r.jobs = {"evt-1#1", "evt-1#2"};
  r.result = {{"ignored", true}};
  const auto f = encode_reply(r);
  CHECK(keys_of(f) == std::vector<std::string>{"id", "jobs", "status", "v"});
  CHECK(reply_as_json(f) ==
        json{{"v", 1}, {"id", "evt-1"}, {"status", "accepted"}, {"jobs", {"evt-1#1", "evt-1#2"}}});
}

TEST_CASE("a duplicate reply lists the jobs, an empty list included") {
  reply r;
  r.id = "evt-1";
  r.status = reply_status::duplicate;
  CHECK(reply_as_json(encode_reply(r)) ==
        json{{"v", 1}, {"id", "evt-1"}, {"status", "duplicate"}, {"jobs", json::array()}});
}

TEST_CASE("a rejected reply carries the error map and a nil id when the id was not read") {
  const auto r = rejection(std::nullopt, error_code::too_large, "too big");
  CHECK(reply_as_json(encode_reply(r)) ==
        json{{"v", 1}, {"id", nullptr}, {"status", "rejected"},
             {"error", {{"code", "too_large"}, {"message", "too big"}}}});
  const auto r2 = rejection("e-1", error_code::invalid_field, "data.lat must be ...", "data.lat");
  CHECK(reply_as_json(encode_reply(r2))["error"] ==
        json{{"code", "invalid_field"}, {"message", "data.lat must be ..."}, {"field", "data.lat"}});
}

TEST_CASE("an overloaded or shutting_down rejection carries retry_after_ms") {
  auto r = rejection("e-1", error_code::overloaded, "busy");
  r.retry_after_ms = 250;
  const auto j = reply_as_json(encode_reply(r));
  CHECK(j["retry_after_ms"] == 250);
  CHECK(keys_of(encode_reply(r)) ==
        std::vector<std::string>{"error", "id", "retry_after_ms", "status", "v"});
}

TEST_CASE("an ok reply carries the result map") {
  reply r;
  r.id = "call-1";
  r.status = reply_status::ok;
  r.result = {{"sent", 2}, {"failed", 0}, {"recipients", {3, 4}}, {"ratio", 0.5}};
  const auto j = reply_as_json(encode_reply(r));
  CHECK(j == json{{"v", 1}, {"id", "call-1"}, {"status", "ok"}, {"result", r.result}});
  r.result = nullptr;
  CHECK(reply_as_json(encode_reply(r))["result"] == json::object());
}

TEST_CASE("a failed reply carries the error with http_status") {
  reply r;
  r.id = "call-1";
  r.status = reply_status::failed;
  r.error = error_info{"permanent", "Django answered 404 for pickup 7", {}, 404};
  const auto j = reply_as_json(encode_reply(r));
  CHECK(j == json{{"v", 1}, {"id", "call-1"}, {"status", "failed"},
                  {"error", {{"code", "permanent"}, {"message", "Django answered 404 for pickup 7"},
                             {"http_status", 404}}}});
}

TEST_CASE("timeout and pong replies carry v, id and status only") {
  for (auto st : {reply_status::timeout, reply_status::pong}) {
    reply r;
    r.id = "x";
    r.status = st;
    r.jobs = {"ignored"};
    r.error = error_info{"ignored", "ignored", {}, {}};
    r.retry_after_ms = 5;
    CHECK(keys_of(encode_reply(r)) == std::vector<std::string>{"id", "status", "v"});
  }
}

TEST_CASE("every reply round-trips through encode_reply and decode_reply") {
  std::vector<reply> replies;
  {
    reply r;
    r.id = "a";
    r.status = reply_status::accepted;
    r.jobs = {"a#1"};
    replies.push_back(r);
    r.status = reply_status::duplicate;
    replies.push_back(r);
  }
  {
    auto r = rejection(std::nullopt, error_code::malformed, "not msgpack");
    replies.push_back(r);
    r = rejection("b", error_code::shutting_down, "stopping", "");
    r.retry_after_ms = 1000;
    replies.push_back(r);
  }
  {
    reply r;
    r.id = "c";
    r.status = reply_status::ok;
    r.result = {{"workers", {1, 2}}, {"distances_km", {0.5, 1.25}}};
    replies.push_back(r);
    r.status = reply_status::failed;
    r.result = json::object();
    r.error = error_info{"exhausted", "gave up after 8 attempts", "", 503};
    replies.push_back(r);
    r.error.reset();
    r.status = reply_status::timeout;
    replies.push_back(r);
    r.status = reply_status::pong;
    r.id.reset();
    replies.push_back(r);
  }
  for (const auto& r : replies) {
    const auto f = encode_reply(r);
    const auto back = decode_reply(f.data(), f.size());
    REQUIRE(back);
    CHECK(reply_to_json(*back) == reply_to_json(r));
    CHECK(back->status == r.status);
    CHECK(back->id == r.id);
    // reply_to_json has the same keys and values as the msgpack frame.
    CHECK(reply_to_json(r) == reply_as_json(f));
  }
}

TEST_CASE("decode_reply refuses frames that are not reply maps") {
  const std::string garbage("\xc1", 1);
  CHECK_FALSE(decode_reply(garbage.data(), garbage.size()));
  const auto arr = frame(json::array({1}));
  CHECK_FALSE(decode_reply(arr.data(), arr.size()));
  const auto no_status = frame(json{{"v", 1}, {"id", "x"}});
  CHECK_FALSE(decode_reply(no_status.data(), no_status.size()));
  const auto bad_status = frame(json{{"v", 1}, {"id", "x"}, {"status", "great"}});
  CHECK_FALSE(decode_reply(bad_status.data(), bad_status.size()));
  const auto bad_jobs = frame(json{{"v", 1}, {"status", "accepted"}, {"jobs", {1}}});
  CHECK_FALSE(decode_reply(bad_jobs.data(), bad_jobs.size()));
  CHECK_FALSE(decode_reply(nullptr, 0));
}

TEST_CASE("reply_to_json prints the same keys as the wire") {
  auto r = rejection("e-2", error_code::missing_field, "data.pickup_id is missing", "data.pickup_id");
  CHECK(reply_to_json(r) ==
        json{{"v", 1}, {"id", "e-2"}, {"status", "rejected"},
             {"error", {{"code", "missing_field"}, {"message", "data.pickup_id is missing"},
                        {"field", "data.pickup_id"}}}});
}

TEST_CASE("rejection builds a rejected reply with the code's name") {
  const auto r = rejection("x", error_code::unauthorized, "not on the allow-list");
  CHECK(r.status == reply_status::rejected);
  REQUIRE(r.error);
  CHECK(r.error->code == "unauthorized");
  CHECK(r.error->field.empty());
  CHECK(r.id == std::optional<std::string>("x"));
}

TEST_CASE("every error code and reply status has its contract name") {
  CHECK(to_string(error_code::malformed) == "malformed");
  CHECK(to_string(error_code::unsupported_version) == "unsupported_version");
  CHECK(to_string(error_code::missing_field) == "missing_field");
  CHECK(to_string(error_code::invalid_field) == "invalid_field");
  CHECK(to_string(error_code::unknown_type) == "unknown_type");
  CHECK(to_string(error_code::too_large) == "too_large");
  CHECK(to_string(error_code::unauthorized) == "unauthorized");
  CHECK(to_string(error_code::overloaded) == "overloaded");
  CHECK(to_string(error_code::shutting_down) == "shutting_down");
  CHECK(to_string(reply_status::accepted) == "accepted");
  CHECK(to_string(reply_status::duplicate) == "duplicate");
  CHECK(to_string(reply_status::rejected) == "rejected");
  CHECK(to_string(reply_status::ok) == "ok");
  CHECK(to_string(reply_status::failed) == "failed");
  CHECK(to_string(reply_status::timeout) == "timeout");
  CHECK(to_string(reply_status::pong) == "pong");
}

// ---- request encoding (client side) ---------------------------------------------

TEST_CASE("encode_request produces frames decode_request accepts unchanged") {
  request p;
  p.operation = op::publish;
  p.id = "evt-42";
  p.type = "pickup.delivered";
  p.ts_ms = 1700000000123;
  p.data = {{"pickup_id", 42}, {"customer_id", 3}, {"worker_id", 8}, {"extra", {{"a", 1.5}}}};
  const auto f = encode_request(p);
  const auto& r = accepted(decode(f));
  CHECK(r.operation == op::publish);
  CHECK(r.id == p.id);
  CHECK(r.type == p.type);
  CHECK(r.ts_ms == p.ts_ms);
  CHECK(r.data == p.data);

  request i;
  i.operation = op::invoke;
  i.id = "call-7";
  i.type = "cleanupData";
  i.data = {{"older_than_days", 30}};
  i.timeout_ms = 4500;
  const auto& ri = accepted(decode(encode_request(i)));
  CHECK(ri.operation == op::invoke);
  CHECK(ri.timeout_ms == 4500);
  CHECK(ri.ts_ms == test_now_ms);  // ts 0 is left out: the broker's time is used
  CHECK(ri.data == i.data);

  request ping;
  ping.operation = op::ping;
  CHECK(accepted(decode(encode_request(ping))).operation == op::ping);
  CHECK(reply_as_json(encode_request(ping)) == json{{"v", 1}, {"op", "ping"}});
}

TEST_CASE("encode_request sends the ordinary keys of contract §1") {
  request p;
  p.id = "evt-1";
  p.type = "pickup.confirmed";
  p.data = {{"pickup_id", 1}, {"customer_id", 2}};
  CHECK(reply_as_json(encode_request(p)) ==
        json{{"v", 1}, {"op", "publish"}, {"id", "evt-1"}, {"type", "pickup.confirmed"},
             {"data", p.data}});
}

// ---- msgpack helpers --------------------------------------------------------------

TEST_CASE("format_double prints the shortest exact text and marks floats") {
  CHECK(format_double(91.5) == "91.5");
  CHECK(format_double(7.0) == "7.0");
  CHECK(format_double(-0.187) == "-0.187");
  CHECK(format_double(0.1) == "0.1");
  CHECK(format_double(1e300) == "1e+300");
  CHECK(format_double(std::nan("")) == "NaN");
  CHECK(format_double(-std::numeric_limits<double>::infinity()) == "-Infinity");
}

TEST_CASE("quote escapes control and non-ASCII bytes and truncates") {
  CHECK(quote("abc") == "\"abc\"");
  CHECK(quote("a\"b") == "\"a\\\"b\"");
  CHECK(quote(std::string("a\n\xff", 3)) == "\"a\\x0a\\xff\"");
  CHECK(quote(std::string(50, 'x'), 40) == "\"" + std::string(40, 'x') + "...\"");
}

TEST_CASE("is_valid_utf8 accepts UTF-8 and refuses overlong forms, surrogates and truncation") {
  CHECK(is_valid_utf8("plain"));
  CHECK(is_valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  CHECK_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  CHECK_FALSE(is_valid_utf8("\xe2\x82"));          // truncated
  CHECK_FALSE(is_valid_utf8("\x80"));
}

TEST_CASE("json_to_msgpack and to_json round-trip JSON values with their number types") {
  const json j = {{"u", 5}, {"n", -5}, {"f", 2.5}, {"s", "x"}, {"b", true}, {"z", nullptr},
                  {"a", {1, {{"k", "v"}}}}, {"big", std::numeric_limits<uint64_t>::max()}};
  const auto bytes = json_to_msgpack(j);
  msgpack::object_handle h;
  REQUIRE(unpack_frame(bytes.data(), bytes.size(), 32, h) == unpack_status::ok);
  json back;
  conversion_error err;
  REQUIRE(to_json(h.get(), "data", back, err));
  CHECK(back == j);
  CHECK(back["f"].is_number_float());
  CHECK(back["n"].get<int64_t>() == -5);
}

TEST_CASE("unpack_frame reports each way a frame can fail") {
  msgpack::object_handle h;
  CHECK(unpack_frame("", 0, 32, h) == unpack_status::empty);
  CHECK(unpack_frame("\xc1", 1, 32, h) == unpack_status::invalid);
  CHECK(unpack_frame("\x92\x01", 2, 32, h) == unpack_status::incomplete);
  CHECK(unpack_frame("\x01\x02", 2, 32, h) == unpack_status::trailing);
  CHECK(unpack_frame("\x91\x91\x90", 3, 2, h) == unpack_status::too_deep);
  CHECK(unpack_frame("\x91\x91\x90", 3, 3, h) == unpack_status::ok);
}

TEST_CASE("pack_float64 keeps integral floats as floats, unlike msgpack-cxx's pack_double") {
  msgpack::sbuffer buf;
  pack_float64(buf, 7.0);
  REQUIRE(buf.size() == 9);
  auto h = msgpack::unpack(buf.data(), buf.size());
  CHECK(h.get().type == msgpack::type::FLOAT64);
  CHECK(h.get().via.f64 == 7.0);
  // The JSON form keeps the float too, so a JSON 7.0 is no id.
  const auto bytes = json_to_msgpack(json{{"x", 7.0}});
  CHECK(json::from_msgpack(bytes)["x"].is_number_float());
}

TEST_CASE("a float 7.0 sent by a client is not accepted as an id") {
  auto data = pickup_created_data();
  data["customer_id"] = 3.0;
  const auto f = frame(publish("pickup.created", data));
  rejected(decode(f), "invalid_field", "data.customer_id");
}

// ---- hostile sizes ----------------------------------------------------------------

namespace {

// A request whose top-level map (or data map) holds `n` extra keys.
std::string many_keys_frame(uint32_t n, bool in_data) {
  return frame_with([&](packer& pk) {
    pk.pack_map(in_data ? 4 : 4 + n);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "big-1");
    pack_str(pk, "type");
    pack_str(pk, "cleanupData");
    pack_str(pk, "data");
    if (in_data)
      pk.pack_map(n);
    else
      pk.pack_map(0);
    for (uint32_t i = 0; i < n; ++i) {
      pack_str(pk, "k" + std::to_string(i));
      pk.pack(i);
    }
  });
}

}  // namespace

TEST_CASE("a frame near 1 MiB with 90000 keys decodes in linear-ish time") {
  // Quadratic key checks would take minutes here; the bound is generous for a
  // loaded machine under sanitizers.
  for (bool in_data : {false, true}) {
    const auto f = many_keys_frame(90000, in_data);
    REQUIRE(f.size() < 1048576);
    const auto start = std::chrono::steady_clock::now();
    const auto d = decode(f);
    const auto elapsed = std::chrono::steady_clock::now() - start;
    REQUIRE(d.req);
    CHECK(d.req->id == "big-1");
    if (in_data)
      CHECK(d.req->data.size() == 90000);
    CHECK(elapsed < std::chrono::seconds(20));
  }
}

TEST_CASE("a 1 MiB array of small integers decodes") {
  const auto f = frame_with([](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "arr-1");
    pack_str(pk, "type");
    pack_str(pk, "cleanupData");
    pack_str(pk, "data");
    pk.pack_map(1);
    pack_str(pk, "xs");
    pk.pack_array(1000000);
    for (int i = 0; i < 1000000; ++i)
      pk.pack(1);
  });
  const auto d = decode(f, f.size());
  REQUIRE(d.req);
  CHECK(d.req->data["xs"].size() == 1000000);
}

TEST_CASE("a pong carries the broker's version, and other replies never do") {
  auto pong = klynaa::protocol::pong_reply("ping-7");
  CHECK(pong.status == klynaa::protocol::reply_status::pong);
  CHECK(pong.id == std::optional<std::string>("ping-7"));
  REQUIRE(pong.version);
  CHECK(*pong.version == klynaa::protocol::version_text());
  const auto frame = klynaa::protocol::encode_reply(pong);
  auto back = klynaa::protocol::decode_reply(frame.data(), frame.size());
  REQUIRE(back);
  CHECK(back->version == pong.version);
  CHECK_FALSE(klynaa::protocol::pong_reply("").id);  // no id: nil

  auto accepted = pong;
  accepted.status = klynaa::protocol::reply_status::accepted;
  const auto accepted_frame = klynaa::protocol::encode_reply(accepted);
  auto decoded = klynaa::protocol::decode_reply(accepted_frame.data(), accepted_frame.size());
  REQUIRE(decoded);
  CHECK_FALSE(decoded->version);
}
