// The ingress codec (message.hpp): request frames decoded and validated in the
// order of docs/ingress-protocol.md, "Checks, in order"; replies and requests encoded.
// Every msgpack-cxx and nlohmann call that can throw is fenced in here: no
// exception leaves this file except std::bad_alloc from the encoders.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "protocol/message.hpp"
#include "protocol/msgpack_json.hpp"
#include "protocol/schema.hpp"
#include "protocol/validate.hpp"

namespace klynaa::protocol {

namespace {

using msgpack::object;

constexpr size_t max_depth = 32;                   // top-level map = depth 1 (docs/ingress-protocol.md)
constexpr size_t max_id_chars = 128;
constexpr int64_t max_ts_ms = 253402300799999;     // 9999-12-31T23:59:59.999Z
constexpr int64_t max_timeout_ms = 86400000;       // 24 h: an invoke waits at most a day
constexpr int64_t default_timeout_ms = 30000;

// Thrown inside decode only, caught in decode_request: keeps each check one line.
struct reject {
  error_code code;
  std::string message;
  std::string field;
};

[[noreturn]] void fail(error_code code, std::string message, std::string field = {}) {
  throw reject{code, std::move(message), std::move(field)};
}

std::string_view str_of(const object& o) { return {o.via.str.ptr, o.via.str.size}; }

// The top-level map's string keys (the codec rejects the others).
class top_level {
 public:
  explicit top_level(const object& map) : map_(map) {}

  // The value of `key`, nullptr when absent; nil counts as absent for every key.
  const object* get(std::string_view key) const {
    for (uint32_t i = 0; i < map_.via.map.size; ++i) {
      const auto& kv = map_.via.map.ptr[i];
      if (kv.key.type == msgpack::type::STR && str_of(kv.key) == key)
        return kv.val.type == msgpack::type::NIL ? nullptr : &kv.val;
    }
    return nullptr;
  }

  // Every key a string, each once; otherwise malformed. Sorting keeps this
  // O(n log n): a hostile map of 100k keys must not cost 10^10 comparisons.
  void check_keys() const {
    std::vector<std::string_view> keys;
    keys.reserve(map_.via.map.size);
    for (uint32_t i = 0; i < map_.via.map.size; ++i) {
      const auto& key = map_.via.map.ptr[i].key;
      if (key.type != msgpack::type::STR)
        fail(error_code::malformed,
             "every key of the request map must be a string, but one is " + describe(key));
      keys.push_back(str_of(key));
    }
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup != keys.end())
      fail(error_code::malformed,
           "the request map has the key " + quote(*dup) + " twice; send each key once");
  }

 private:
  const object& map_;
};

std::string names_of_functions() {
  std::string s;
  for (const auto& f : functions())
    s += (s.empty() ? "" : ", ") + std::string{f.name};
  return s;
}

std::string names_of_events() {
  std::string s;
  for (const auto& e : events())
    s += (s.empty() ? "" : ", ") + std::string{e.name};
  return s;
}

std::string_view kind_of(const object& o) {
  switch (o.type) {
    case msgpack::type::ARRAY: return "an array";
    case msgpack::type::STR: return "a string";
    case msgpack::type::BIN: return "binary data";
    case msgpack::type::EXT: return "an extension value";
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return "a boolean";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return "a float";
    default: return "an integer";
  }
}

// Frames and size, then msgpack decoding (the first two "Checks, in order").
const object& unpack_request(const void* data, size_t size, const decode_limits& limits,
                             msgpack::object_handle& handle) {
  if (size > limits.max_bytes)
    fail(error_code::too_large, "the request is " + std::to_string(size) +
                                    " bytes, over the limit of " +
                                    std::to_string(limits.max_bytes) +
                                    " bytes (ingress.max_bytes); send less data");
  switch (unpack_frame(data, size, max_depth, handle)) {
    case unpack_status::ok: break;
    case unpack_status::empty:
      fail(error_code::malformed, "the request frame is empty; send one msgpack map");
    case unpack_status::invalid:
      fail(error_code::malformed, "the request frame is not valid msgpack; send one msgpack map");
    case unpack_status::incomplete:
      fail(error_code::malformed,
           "the request frame ends in the middle of a msgpack value; send one complete msgpack map");
    case unpack_status::trailing:
      fail(error_code::malformed,
           "the request frame has bytes after the msgpack map; send exactly one msgpack map per frame");
    case unpack_status::too_deep:
      fail(error_code::malformed,
           "the request nests deeper than 32 levels (the top-level map is level 1); flatten the data");
  }
  const object& root = handle.get();
  if (root.type != msgpack::type::MAP)
    fail(error_code::malformed,
         "the request must be a msgpack map, got " + std::string{kind_of(root)});
  return root;
}

void check_version(const top_level& top) {
  const object* v = top.get("v");
  if (!v)
    fail(error_code::missing_field, "v is missing; send v=1, the protocol version", "v");
  if (!(v->type == msgpack::type::POSITIVE_INTEGER || v->type == msgpack::type::NEGATIVE_INTEGER))
    fail(error_code::invalid_field, "v must be the integer 1, got " + describe(*v), "v");
  if (v->type != msgpack::type::POSITIVE_INTEGER || v->via.u64 != 1)
    fail(error_code::unsupported_version,
         "protocol version " + describe(*v) + " is not supported; send v=1", "v");
}

op read_op(const top_level& top) {
  const object* o = top.get("op");
  if (!o)
    return op::publish;
  if (o->type == msgpack::type::STR) {
    const auto s = str_of(*o);
    if (s == "publish") return op::publish;
    if (s == "invoke") return op::invoke;
    if (s == "ping") return op::ping;
  }
  fail(error_code::invalid_field,
       "op must be \"publish\", \"invoke\" or \"ping\", got " + describe(*o), "op");
}

bool is_id_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == ':' || c == '-';
}

std::string read_id(const top_level& top) {
  static const std::string rule = "1-128 characters of A-Z a-z 0-9 . _ : -";
  const object* o = top.get("id");
  if (!o)
    fail(error_code::missing_field,
         "id is missing; send a unique id of " + rule + " (the idempotency key)", "id");
  if (o->type != msgpack::type::STR)
    fail(error_code::invalid_field, "id must be a string of " + rule + ", got " + describe(*o),
         "id");
  const auto s = str_of(*o);
  if (s.empty())
    fail(error_code::invalid_field, "id must not be empty; send " + rule, "id");
  if (s.size() > max_id_chars)
    fail(error_code::invalid_field,
         "id is " + std::to_string(s.size()) + " characters long; send " + rule, "id");
  for (size_t i = 0; i < s.size(); ++i)
    if (!is_id_char(s[i]))
      fail(error_code::invalid_field,
           "id has " + quote(s.substr(i, 1)) + " at position " + std::to_string(i + 1) +
               "; send " + rule,
           "id");
  return std::string{s};
}

// Returns the type name and its fields.
std::pair<std::string, const std::vector<field_spec>*> read_type(const top_level& top, op which) {
  const object* o = top.get("type");
  if (!o)
    fail(error_code::missing_field,
         "type is missing; send an event type or function name, e.g. pickup.created", "type");
  if (o->type != msgpack::type::STR)
    fail(error_code::invalid_field,
         "type must be a string naming an event type or function, got " + describe(*o), "type");
  std::string name{str_of(*o)};
  if (const auto* f = find_function(name))
    return {std::move(name), &f->fields};
  if (const auto* e = find_event(name)) {
    if (which == op::invoke)
      fail(error_code::unknown_type,
           "invoke takes a function name (" + names_of_functions() + "), but " + quote(name) +
               " is an event type; publish it instead",
           "type");
    return {std::move(name), &e->fields};
  }
  if (which == op::invoke)
    fail(error_code::unknown_type,
         "unknown function " + quote(name) + "; invoke takes one of " + names_of_functions(),
         "type");
  fail(error_code::unknown_type,
       "unknown type " + quote(name) + "; publish takes an event type (" + names_of_events() +
           ") or a function name (" + names_of_functions() + ")",
       "type");
}

int64_t read_ts(const top_level& top, int64_t now_ms) {
  const object* o = top.get("ts");
  if (!o)
    return now_ms;
  if (o->type != msgpack::type::POSITIVE_INTEGER || o->via.u64 > static_cast<uint64_t>(max_ts_ms))
    fail(error_code::invalid_field,
         "ts must be an integer number of milliseconds since the Unix epoch, between 0 and " +
             std::to_string(max_ts_ms) + ", got " + describe(*o),
         "ts");
  return static_cast<int64_t>(o->via.u64);
}

// `data`: a map, its fields per the table, then the whole of it as JSON.
nlohmann::json read_data(const top_level& top, std::string_view type,
                         const std::vector<field_spec>& fields) {
  const object* o = top.get("data");
  if (!o)
    fail(error_code::missing_field,
         "data is missing; send a map of the fields " + std::string{type} + " takes (it may be "
         "empty when none is required)",
         "data");
  if (o->type != msgpack::type::MAP)
    fail(error_code::invalid_field, "data must be a map, got " + std::string{kind_of(*o)}, "data");
  if (auto err = validate_data(type, fields, *o))
    fail(err->code == "missing_field" ? error_code::missing_field : error_code::invalid_field,
         std::move(err->message), std::move(err->field));
  nlohmann::json out;
  conversion_error err;
  if (!to_json(*o, "data", out, err))
    fail(error_code::invalid_field, std::move(err.message), std::move(err.path));
  // A known optional field sent as nil is treated as absent: drop it, so handlers
  // can rely on a known field being either absent or valid.
  for (const auto& spec : fields) {
    auto it = out.find(std::string{spec.name});
    if (it != out.end() && it->is_null())
      out.erase(it);
  }
  return out;
}

int64_t read_timeout(const top_level& top) {
  const object* o = top.get("timeout_ms");
  if (!o)
    return default_timeout_ms;
  if (o->type != msgpack::type::POSITIVE_INTEGER || o->via.u64 == 0 ||
      o->via.u64 > static_cast<uint64_t>(max_timeout_ms))
    fail(error_code::invalid_field,
         "timeout_ms must be a positive integer number of milliseconds, at most " +
             std::to_string(max_timeout_ms) + " (24 hours), got " + describe(*o),
         "timeout_ms");
  return static_cast<int64_t>(o->via.u64);
}

// The echo rule (docs/ingress-protocol.md, "Checks, in order"): the first "id"
// key's value when it is a string.
std::optional<std::string> echo_id(const object& root) {
  for (uint32_t i = 0; i < root.via.map.size; ++i) {
    const auto& kv = root.via.map.ptr[i];
    if (kv.key.type == msgpack::type::STR && str_of(kv.key) == "id")
      return kv.val.type == msgpack::type::STR ? std::optional<std::string>{std::string{str_of(kv.val)}}
                                               : std::nullopt;
  }
  return std::nullopt;
}

void decode(const void* data, size_t size, int64_t now_ms, const decode_limits& limits,
            decoded& out) {
  msgpack::object_handle handle;
  const object& root = unpack_request(data, size, limits, handle);
  out.id = echo_id(root);
  const top_level top(root);
  top.check_keys();
  check_version(top);
  request r;
  r.operation = read_op(top);
  r.ts_ms = now_ms;
  if (r.operation == op::ping) {  // its id is optional and not validated, only echoed
    r.id = out.id.value_or("");
    out.req = std::move(r);
    return;
  }
  r.id = read_id(top);
  auto [type, fields] = read_type(top, r.operation);
  r.type = std::move(type);
  r.ts_ms = read_ts(top, now_ms);
  r.data = read_data(top, r.type, *fields);
  if (r.operation == op::invoke)
    r.timeout_ms = read_timeout(top);
  out.req = std::move(r);
}

// ---- encoding ----------------------------------------------------------------

using packer = msgpack::packer<msgpack::sbuffer>;

void pack_string(packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

bool has_jobs(reply_status s) { return s == reply_status::accepted || s == reply_status::duplicate; }
bool has_result(reply_status s) { return s == reply_status::ok; }
bool has_error(const reply& r) {
  return r.error && (r.status == reply_status::rejected || r.status == reply_status::failed);
}
bool has_retry_after(const reply& r) {
  return r.retry_after_ms && r.status == reply_status::rejected;
}

void pack_error(packer& pk, const error_info& e) {
  pk.pack_map(2 + (e.field.empty() ? 0 : 1) + (e.http_status ? 1 : 0));
  pack_string(pk, "code");
  pack_string(pk, e.code);
  pack_string(pk, "message");
  pack_string(pk, e.message);
  if (!e.field.empty()) {
    pack_string(pk, "field");
    pack_string(pk, e.field);
  }
  if (e.http_status) {
    pack_string(pk, "http_status");
    pk.pack_int(*e.http_status);
  }
}

std::optional<reply_status> status_from(std::string_view s) {
  for (auto st : {reply_status::accepted, reply_status::duplicate, reply_status::rejected,
                  reply_status::ok, reply_status::failed, reply_status::timeout,
                  reply_status::pong})
    if (to_string(st) == s)
      return st;
  return std::nullopt;
}

std::optional<int64_t> int_of(const object& o) {
  if (o.type == msgpack::type::POSITIVE_INTEGER && o.via.u64 <= static_cast<uint64_t>(INT64_MAX))
    return static_cast<int64_t>(o.via.u64);
  if (o.type == msgpack::type::NEGATIVE_INTEGER)
    return o.via.i64;
  return std::nullopt;
}

std::optional<error_info> error_from(const object& o) {
  if (o.type != msgpack::type::MAP)
    return std::nullopt;
  error_info e;
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const auto& kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR)
      continue;
    const auto key = str_of(kv.key);
    if (kv.val.type == msgpack::type::STR) {
      if (key == "code") e.code = std::string{str_of(kv.val)};
      else if (key == "message") e.message = std::string{str_of(kv.val)};
      else if (key == "field") e.field = std::string{str_of(kv.val)};
    } else if (key == "http_status") {
      if (auto n = int_of(kv.val); n && *n >= INT32_MIN && *n <= INT32_MAX)
        e.http_status = static_cast<int>(*n);
    }
  }
  return e;
}

// Fills one key of a decoded reply; false when the value has the wrong type.
bool read_reply_key(std::string_view key, const object& v, reply& r, bool& saw_status) {
  if (key == "status") {
    if (v.type != msgpack::type::STR) return false;
    auto st = status_from(str_of(v));
    if (!st) return false;
    r.status = *st;
    saw_status = true;
  } else if (key == "id") {
    if (v.type == msgpack::type::STR) r.id = std::string{str_of(v)};
    else if (v.type != msgpack::type::NIL) return false;
  } else if (key == "jobs") {
    if (v.type != msgpack::type::ARRAY) return false;
    for (uint32_t i = 0; i < v.via.array.size; ++i) {
      if (v.via.array.ptr[i].type != msgpack::type::STR) return false;
      r.jobs.emplace_back(str_of(v.via.array.ptr[i]));
    }
  } else if (key == "result") {
    conversion_error err;
    if (!to_json(v, "result", r.result, err)) return false;
  } else if (key == "error") {
    r.error = error_from(v);
    if (!r.error) return false;
  } else if (key == "retry_after_ms") {
    r.retry_after_ms = int_of(v);
    if (!r.retry_after_ms) return false;
  } else if (key == "version") {
    if (v.type != msgpack::type::STR) return false;
    r.version = std::string{str_of(v)};
  } else if (key == "v") {
    if (v.type != msgpack::type::POSITIVE_INTEGER || v.via.u64 != 1) return false;
  }
  return true;  // unknown keys: ignored, for forward compatibility
}

}  // namespace

std::string_view to_string(error_code c) {
  switch (c) {
    case error_code::malformed: return "malformed";
    case error_code::unsupported_version: return "unsupported_version";
    case error_code::missing_field: return "missing_field";
    case error_code::invalid_field: return "invalid_field";
    case error_code::unknown_type: return "unknown_type";
    case error_code::too_large: return "too_large";
    case error_code::unauthorized: return "unauthorized";
    case error_code::overloaded: return "overloaded";
    case error_code::shutting_down: return "shutting_down";
  }
  return "malformed";
}

std::string_view to_string(reply_status s) {
  switch (s) {
    case reply_status::accepted: return "accepted";
    case reply_status::duplicate: return "duplicate";
    case reply_status::rejected: return "rejected";
    case reply_status::ok: return "ok";
    case reply_status::failed: return "failed";
    case reply_status::timeout: return "timeout";
    case reply_status::pong: return "pong";
  }
  return "rejected";
}

decoded decode_request(const void* data, size_t size, int64_t now_ms, const decode_limits& limits) {
  decoded out;
  try {
    decode(data, size, now_ms, limits, out);
  } catch (reject& r) {
    out.req.reset();
    out.error = error_info{std::string{to_string(r.code)}, std::move(r.message),
                           std::move(r.field), {}};
    if (r.code == error_code::too_large)
      out.id.reset();
  } catch (const std::exception&) {
    // Not expected (msgpack errors are handled in unpack_frame); keep the promise
    // never to throw, and answer as if the frame could not be decoded.
    out.req.reset();
    out.error = error_info{"malformed", "the request could not be decoded; send one msgpack map",
                           {}, {}};
  }
  return out;
}

reply rejection(std::optional<std::string> id, error_code code, std::string message,
                std::string field) {
  reply r;
  r.id = std::move(id);
  r.status = reply_status::rejected;
  r.error = error_info{std::string{to_string(code)}, std::move(message), std::move(field), {}};
  return r;
}

std::string encode_reply(const reply& r) {
  msgpack::sbuffer buf;
  packer pk(buf);
  const bool jobs = has_jobs(r.status), result = has_result(r.status), error = has_error(r),
             retry = has_retry_after(r),
             version = r.version && r.status == reply_status::pong;
  pk.pack_map(3 + jobs + result + error + retry + version);
  pack_string(pk, "v");
  pk.pack_int(1);
  pack_string(pk, "id");
  if (r.id)
    pack_string(pk, *r.id);
  else
    pk.pack_nil();
  pack_string(pk, "status");
  pack_string(pk, to_string(r.status));
  if (jobs) {
    pack_string(pk, "jobs");
    pk.pack_array(static_cast<uint32_t>(r.jobs.size()));
    for (const auto& j : r.jobs)
      pack_string(pk, j);
  }
  if (result) {
    pack_string(pk, "result");
    pack_json(buf, r.result.is_null() ? nlohmann::json::object() : r.result);
  }
  if (error) {
    pack_string(pk, "error");
    pack_error(pk, *r.error);
  }
  if (retry) {
    pack_string(pk, "retry_after_ms");
    pk.pack_int64(*r.retry_after_ms);
  }
  if (version) {
    pack_string(pk, "version");
    pack_string(pk, *r.version);
  }
  return std::string(buf.data(), buf.size());
}

std::string encode_request(const request& r) {
  msgpack::sbuffer buf;
  packer pk(buf);
  const bool ping = r.operation == op::ping;
  const bool with_id = !r.id.empty();
  const bool invoke = r.operation == op::invoke;
  const bool with_ts = !ping && r.ts_ms != 0;
  pk.pack_map(2 + with_id + (ping ? 0 : 2) + with_ts + invoke);
  pack_string(pk, "v");
  pk.pack_int(1);
  pack_string(pk, "op");
  pack_string(pk, ping ? "ping" : invoke ? "invoke" : "publish");
  if (with_id) {
    pack_string(pk, "id");
    pack_string(pk, r.id);
  }
  if (!ping) {
    pack_string(pk, "type");
    pack_string(pk, r.type);
    pack_string(pk, "data");
    pack_json(buf, r.data.is_null() ? nlohmann::json::object() : r.data);
  }
  if (with_ts) {
    pack_string(pk, "ts");
    pk.pack_int64(r.ts_ms);
  }
  if (invoke) {
    pack_string(pk, "timeout_ms");
    pk.pack_int64(r.timeout_ms);
  }
  return std::string(buf.data(), buf.size());
}

std::optional<reply> decode_reply(const void* data, size_t size) {
  try {
    msgpack::object_handle handle;
    if (unpack_frame(data, size, 64, handle) != unpack_status::ok)
      return std::nullopt;
    const object& root = handle.get();
    if (root.type != msgpack::type::MAP)
      return std::nullopt;
    reply r;
    bool saw_status = false;
    for (uint32_t i = 0; i < root.via.map.size; ++i) {
      const auto& kv = root.via.map.ptr[i];
      if (kv.key.type != msgpack::type::STR)
        return std::nullopt;
      if (!read_reply_key(str_of(kv.key), kv.val, r, saw_status))
        return std::nullopt;
    }
    if (!saw_status)
      return std::nullopt;
    return r;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

nlohmann::json reply_to_json(const reply& r) {
  nlohmann::json j = nlohmann::json::object();
  j["v"] = 1;
  j["id"] = r.id ? nlohmann::json(*r.id) : nlohmann::json(nullptr);
  j["status"] = std::string{to_string(r.status)};
  if (has_jobs(r.status))
    j["jobs"] = r.jobs;
  if (has_result(r.status))
    j["result"] = r.result.is_null() ? nlohmann::json::object() : r.result;
  if (has_error(r)) {
    nlohmann::json e = {{"code", r.error->code}, {"message", r.error->message}};
    if (!r.error->field.empty())
      e["field"] = r.error->field;
    if (r.error->http_status)
      e["http_status"] = *r.error->http_status;
    j["error"] = std::move(e);
  }
  if (has_retry_after(r))
    j["retry_after_ms"] = *r.retry_after_ms;
  return j;
}

}  // namespace klynaa::protocol
