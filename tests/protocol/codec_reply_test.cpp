// The ingress codec, encoding: replies and requests as they go on the wire
// (docs/ingress-protocol.md, "Reply").
#include "codec_support.hpp"

using namespace klynaa::protocol;
using namespace klynaa::protocol::test;

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

TEST_CASE("encode_request sends the ordinary keys of a request") {
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
