// libFuzzer target: one ingress frame of arbitrary bytes through exactly what the
// broker does with it (broker/ingress.cpp handle_frames / handle_request /
// send_reply), with the broker's default limits (protocol::config):
//
//   decode_request (size, msgpack, depth, v, op, id, type, ts, data validation,
//   msgpack -> JSON) -> a rejected reply, a pong, or derive_jobs plus the
//   accepted reply -> encode_reply; each job's data as the store keeps it (dump).
//
// On top of that, checks of docs/ingress-protocol.md that the unit tests state for chosen
// inputs, here for every input: exactly one of request and error; error codes,
// fields and messages well formed; a reply decodes back to itself; a decoded
// request re-encodes and decodes to itself; its data converts JSON -> msgpack ->
// JSON unchanged and passes the JSON form of the validator; every derived job
// is valid data for its function. A failed check aborts (a crash to libFuzzer),
// as do sanitizer reports and exceptions escaping (decode_request never throws).
// docs/reliability.md "Fuzzing" says how to build and run it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include "protocol/config.hpp"
#include "protocol/jobs.hpp"
#include "protocol/message.hpp"
#include "protocol/msgpack_json.hpp"
#include "protocol/schema.hpp"
#include "protocol/validate.hpp"
#include "check.hpp"

namespace p = klynaa::protocol;

namespace {

#define CHECK(cond) FUZZ_CHECK(cond)

// The broker's "received at" (wall_ms()); fixed so a crash reproduces.
constexpr int64_t now_ms = 1717171717171;

const p::config& defaults() {
  static const p::config cfg;
  return cfg;
}

bool known_error_code(const std::string& code) {
  for (const auto& e : p::error_codes())
    if (p::to_string(e.code) == code)
      return true;
  return false;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// A rejection's `field`: empty, a top-level key, or a dotted path into data.
bool well_formed_field(const std::string& f) {
  static const std::set<std::string> top = {"v", "op", "id", "type", "ts", "data", "timeout_ms"};
  return f.empty() || top.count(f) || starts_with(f, "data.");
}

// What send_reply does, and what a client then reads (decode_reply).
void encode_and_read_back(const p::reply& r) {
  const std::string body = p::encode_reply(r);
  const auto back = p::decode_reply(body.data(), body.size());
  CHECK(back.has_value());
  CHECK(back->status == r.status);
  CHECK(back->id == r.id);
  if (r.status == p::reply_status::accepted || r.status == p::reply_status::duplicate)
    CHECK(back->jobs == r.jobs);
  if (r.status == p::reply_status::ok)
    CHECK(back->result == (r.result.is_null() ? nlohmann::json::object() : r.result));
  if (r.error && (r.status == p::reply_status::rejected || r.status == p::reply_status::failed)) {
    CHECK(back->error.has_value());
    CHECK(back->error->code == r.error->code);
    CHECK(back->error->message == r.error->message);
    CHECK(back->error->field == r.error->field);
    CHECK(back->error->http_status == r.error->http_status);
  }
  if (r.retry_after_ms && r.status == p::reply_status::rejected)
    CHECK(back->retry_after_ms == r.retry_after_ms);
  // What `klynaa publish|invoke` prints; dump() throws on invalid UTF-8, which
  // only a client-chosen id can bring (echoed as sent), so replace, do not throw.
  (void)p::reply_to_json(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void rejected(const p::decoded& d) {
  const auto& e = *d.error;
  CHECK(known_error_code(e.code));
  CHECK(!e.message.empty());
  CHECK(p::is_valid_utf8(e.message));  // clients decode it as text
  CHECK(p::is_valid_utf8(e.field));
  CHECK(well_formed_field(e.field));
  CHECK(!e.http_status);
  if (e.code == "too_large")
    CHECK(!d.id);
  // handle_frames: the rejection echoes the id the codec could read.
  p::reply rep;
  rep.id = d.id;
  rep.status = p::reply_status::rejected;
  rep.error = d.error;
  encode_and_read_back(rep);
}

// The request, encoded as a client would (encode_request), decodes to itself.
void reencodes(const p::request& r) {
  const std::string frame = p::encode_request(r);
  p::decode_limits roomy;  // float32 values come back as float64: allow the growth
  roomy.max_bytes = 16 * frame.size() + 64;
  const auto d = p::decode_request(frame.data(), frame.size(), now_ms + 1, roomy);
  CHECK(d.req.has_value());
  CHECK(!d.error);
  CHECK(d.req->operation == r.operation);
  CHECK(d.req->id == r.id);
  if (r.operation == p::op::ping)
    return;
  CHECK(d.req->type == r.type);
  if (r.ts_ms != 0)  // encode_request leaves a zero ts out
    CHECK(d.req->ts_ms == r.ts_ms);
  CHECK(d.req->data == r.data);
  if (r.operation == p::op::invoke)
    CHECK(d.req->timeout_ms == r.timeout_ms);
}

// data: JSON -> msgpack -> JSON is the identity, and the JSON form of the
// validator (the CLI's check of --data) agrees with the ingress.
void data_converts(const p::request& r) {
  CHECK(r.data.is_object());
  const std::string packed = p::json_to_msgpack(r.data);
  msgpack::object_handle h;
  CHECK(p::unpack_frame(packed.data(), packed.size(), 64, h) == p::unpack_status::ok);
  nlohmann::json back;
  p::conversion_error err;
  CHECK(p::to_json(h.get(), "data", back, err));
  CHECK(back == r.data);
  CHECK(!p::validate_data(r.type, r.data));
}

// handle_request past the drain and overload checks: derive the jobs, keep each
// one's data as text (job_record::data_json), answer accepted with the job ids.
void accepted(const p::request& r) {
  const int64_t hold_ms = defaults().escrow.hold_seconds * 1000;
  const auto derived = p::derive_jobs(r, hold_ms);
  CHECK(!derived.jobs.empty());
  p::reply rep;
  rep.id = r.id;
  rep.status = p::reply_status::accepted;
  int n = 0;
  for (const auto& js : derived.jobs) {
    ++n;
    CHECK(js.id == p::child_job_id(r.id, n));
    CHECK(p::find_function(js.function));
    CHECK(!p::validate_data(js.function, js.data));  // "already valid for it"
    CHECK(js.ordering_key == p::ordering_key_of(js.data));
    CHECK(js.due_ms == 0 || js.auto_release);
    const std::string text = js.data.dump();
    CHECK(nlohmann::json::parse(text) == js.data);  // what a node reads back
    rep.jobs.push_back(js.id);
  }
  if (derived.closes_pickup)
    CHECK(r.type == "pickup.confirmed" || r.type == "pickup.disputed");
  encode_and_read_back(rep);
  if (r.operation == p::op::invoke) {
    // The outcome replies: a result map (here the request's own data) or a failure.
    p::reply ok;
    ok.id = r.id;
    ok.status = p::reply_status::ok;
    ok.result = r.data;
    encode_and_read_back(ok);
    p::reply failed;
    failed.id = r.id;
    failed.status = p::reply_status::failed;
    failed.error = p::error_info{"permanent", "Django answered 404", {}, 404};
    encode_and_read_back(failed);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  p::decode_limits limits;  // as handle_frames sets them from ingress.max_bytes
  limits.max_bytes = static_cast<size_t>(defaults().ingress.max_bytes);
  const p::decoded d = p::decode_request(data, size, now_ms, limits);
  CHECK(d.req.has_value() != d.error.has_value());
  if (d.error) {
    rejected(d);
    return 0;
  }
  const p::request& r = *d.req;
  reencodes(r);
  if (r.operation == p::op::ping) {
    CHECK(r.id == d.id.value_or(""));
    p::reply rep;
    if (!r.id.empty()) rep.id = r.id;
    rep.status = p::reply_status::pong;
    encode_and_read_back(rep);
    return 0;
  }
  CHECK(d.id == r.id);
  CHECK(!r.id.empty() && r.id.size() <= 128);
  CHECK(r.ts_ms >= 0);
  CHECK(r.timeout_ms > 0);
  data_converts(r);
  accepted(r);
  return 0;
}
