// The ingress codec, fields: v, op, id, type, ts, data and timeout_ms, each
// check and its rejection, and the check order (docs/ingress-protocol.md,
// "Checks, in order"; the id echo rule).
#include "codec_support.hpp"

using namespace klynaa::protocol;
using namespace klynaa::protocol::test;

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
