// The msgpack codec of the broker<->node cluster protocol (KJCP/1, spec:
// docs/cluster-protocol.md). Every message is one msgpack map with string keys;
// "t" names the message. The encoder always writes every key; the decoder
// requires the keys the spec marks as required, ignores unknown keys (so a newer
// peer may add some) and never throws: msgpack exceptions stop here and become
// an error string naming the key.
#include "protocol/cluster.hpp"

#include <cmath>
#include <iterator>
#include <string_view>
#include <limits>
#include <type_traits>

#include <msgpack.hpp>

namespace klynaa::protocol::cluster {

namespace {

using packer = msgpack::packer<msgpack::sbuffer>;

// Bounds for a hostile frame: msgpack-cxx allocates a container's elements from
// the count in its header, before the elements arrive.
constexpr size_t max_array = 100000;  // children of one done, kinds of one ready
constexpr size_t max_map = 64;        // keys of one message or child
constexpr size_t max_str = 64u << 20;
// The frames of a BATCH: each a whole message, which may hold a string of
// max_str and its other keys. (A bin's bytes must be in the frame: no
// allocation ahead of them.)
constexpr size_t max_bin = 2 * max_str;
constexpr size_t max_ext = 0;
constexpr size_t max_depth = 8;

// -- encoding ----------------------------------------------------------------

void pack_str(packer& pk, const std::string& s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void pack_key(packer& pk, const char* key) {
  auto n = static_cast<uint32_t>(std::char_traits<char>::length(key));
  pk.pack_str(n);
  pk.pack_str_body(key, n);
}

template <class T>
void pack_kv(packer& pk, const char* key, const T& value) {
  pack_key(pk, key);
  if constexpr (std::is_same_v<T, std::string>)
    pack_str(pk, value);
  else
    pk.pack(value);
}

void pack_strings(packer& pk, const char* key, const std::vector<std::string>& xs) {
  pack_key(pk, key);
  pk.pack_array(static_cast<uint32_t>(xs.size()));
  for (const auto& x : xs)
    pack_str(pk, x);
}

void pack_child(packer& pk, const child& c) {
  pk.pack_map(4);
  pack_kv(pk, "job_id", c.job_id);
  pack_kv(pk, "function", c.function);
  pack_kv(pk, "data_json", c.data_json);
  pack_kv(pk, "due_ms", c.due_ms);
}

struct encoder {
  packer& pk;

  void operator()(const ready& m) const {
    pk.pack_map(6);
    pack_kv(pk, "t", std::string{"ready"});
    pack_kv(pk, "v", int64_t{version});
    pack_kv(pk, "node", m.node);
    pack_strings(pk, "kinds", m.kinds);
    pack_kv(pk, "credit", m.credit);
    pack_kv(pk, "batch", m.batch);
  }
  void operator()(const welcome& m) const {
    pk.pack_map(4);
    pack_kv(pk, "t", std::string{"welcome"});
    pack_kv(pk, "heartbeat_ms", m.heartbeat_ms);
    pack_kv(pk, "lease_ms", m.lease_ms);
    pack_kv(pk, "batch", m.batch);
  }
  void operator()(const job& m) const {
    const bool task = !m.task_url.empty();
    pk.pack_map(task ? 9 : 7);
    pack_kv(pk, "t", std::string{"job"});
    pack_kv(pk, "job_id", m.job_id);
    pack_kv(pk, "function", m.function);
    pack_kv(pk, "data_json", m.data_json);
    pack_kv(pk, "attempt", m.attempt);
    pack_kv(pk, "lease", m.lease);
    pack_kv(pk, "ts_ms", m.ts_ms);
    if (task) {
      pack_kv(pk, "url", m.task_url);
      pack_kv(pk, "timeout_ms", m.task_timeout_ms);
    }
  }
  void operator()(const done& m) const {
    pk.pack_map(12);
    pack_kv(pk, "t", std::string{"done"});
    pack_kv(pk, "job_id", m.job_id);
    pack_kv(pk, "lease", m.lease);
    pack_kv(pk, "outcome", m.outcome);
    pack_kv(pk, "result_json", m.result_json);
    pack_kv(pk, "error_code", m.error_code);
    pack_kv(pk, "error_message", m.error_message);
    pack_kv(pk, "http_status", m.http_status);
    pack_kv(pk, "retry_after_ms", m.retry_after_ms);
    pack_kv(pk, "duration_ms", m.duration_ms);
    pack_key(pk, "children");
    pk.pack_array(static_cast<uint32_t>(m.children.size()));
    for (const auto& c : m.children)
      pack_child(pk, c);
    pack_kv(pk, "credit", m.credit);
  }
  void operator()(const credit& m) const {
    pk.pack_map(2);
    pack_kv(pk, "t", std::string{"credit"});
    pack_kv(pk, "n", m.n);
  }
  void operator()(const heartbeat& m) const {
    pk.pack_map(m.leases.empty() ? 1 : 2);
    pack_kv(pk, "t", std::string{"heartbeat"});
    if (m.leases.empty())
      return;
    pack_key(pk, "leases");
    pk.pack_array(static_cast<uint32_t>(m.leases.size()));
    for (auto l : m.leases)
      pk.pack_int64(l);
  }
  void operator()(const bye& m) const {
    pk.pack_map(m.reason.empty() ? 2 : 3);
    pack_kv(pk, "t", std::string{"bye"});
    pack_strings(pk, "jobs", m.jobs);
    if (!m.reason.empty())
      pack_kv(pk, "reason", m.reason);
  }
  void operator()(const node_stats& m) const {
    pk.pack_map(2);
    pack_kv(pk, "t", std::string{"node_stats"});
    pack_kv(pk, "json", m.json);
  }
  void operator()(const withdraw& m) const {
    pk.pack_map(5);
    pack_kv(pk, "t", std::string{"withdraw"});
    pack_strings(pk, "kinds", m.kinds);
    pack_kv(pk, "reason", m.reason);
    pack_kv(pk, "credit", m.credit);
    pack_strings(pk, "jobs", m.jobs);
  }
  void operator()(const batch& m) const { pack_batch(pk, m.frames); }

  static void pack_batch(packer& pk, const std::vector<std::string>& frames) {
    pk.pack_map(2);
    pack_kv(pk, "t", std::string{"batch"});
    pack_key(pk, "frames");
    pk.pack_array(static_cast<uint32_t>(frames.size()));
    for (const auto& f : frames) {
      pk.pack_bin(static_cast<uint32_t>(f.size()));
      pk.pack_bin_body(f.data(), static_cast<uint32_t>(f.size()));
    }
  }
};

// -- decoding ----------------------------------------------------------------

/// Read access to one msgpack map by key. Every getter returns false and fills
/// `error` when the key is missing (and required) or holds the wrong type.
class map_reader {
 public:
  map_reader(const msgpack::object& map, std::string where, std::string* error)
      : map_(map), where_(std::move(where)), error_(error) {}

  const msgpack::object* find(const char* key) const {
    const auto& m = map_.via.map;
    std::string_view k{key};
    for (uint32_t i = 0; i < m.size; ++i) {
      const auto& kv = m.ptr[i];
      if (kv.key.type == msgpack::type::STR && std::string_view{kv.key.via.str.ptr, kv.key.via.str.size} == k)
        return &kv.val;
    }
    return nullptr;
  }

  bool str(const char* key, std::string& out, bool required = true) {
    const auto* v = find(key);
    if (v == nullptr)
      return !required || fail(key, "is missing");
    if (v->type != msgpack::type::STR)
      return fail(key, "must be a string");
    out.assign(v->via.str.ptr, v->via.str.size);
    return true;
  }

  bool int64(const char* key, int64_t& out, bool required = true) {
    const auto* v = find(key);
    if (v == nullptr)
      return !required || fail(key, "is missing");
    switch (v->type) {
      case msgpack::type::POSITIVE_INTEGER:
        if (v->via.u64 > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          return fail(key, "is out of range");
        out = static_cast<int64_t>(v->via.u64);
        return true;
      case msgpack::type::NEGATIVE_INTEGER:
        out = v->via.i64;
        return true;
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64: {
        // Some clients send whole numbers as floats; accept those exactly.
        double d = v->via.f64;
        if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > 9.0e15)
          return fail(key, "must be an integer");
        out = static_cast<int64_t>(d);
        return true;
      }
      default:
        return fail(key, "must be an integer");
    }
  }

  bool boolean(const char* key, bool& out, bool required = true) {
    const auto* v = find(key);
    if (v == nullptr)
      return !required || fail(key, "is missing");
    if (v->type != msgpack::type::BOOLEAN)
      return fail(key, "must be a boolean");
    out = v->via.boolean;
    return true;
  }

  bool strings(const char* key, std::vector<std::string>& out, bool required = true) {
    const auto* v = find(key);
    if (v == nullptr)
      return !required || fail(key, "is missing");
    if (v->type != msgpack::type::ARRAY)
      return fail(key, "must be an array of strings");
    out.clear();
    for (uint32_t i = 0; i < v->via.array.size; ++i) {
      const auto& e = v->via.array.ptr[i];
      if (e.type != msgpack::type::STR)
        return fail(key, "must be an array of strings");
      out.emplace_back(e.via.str.ptr, e.via.str.size);
    }
    return true;
  }

  bool ints(const char* key, std::vector<int64_t>& out, bool required = true) {
    const auto* v = find(key);
    if (v == nullptr)
      return !required || fail(key, "is missing");
    if (v->type != msgpack::type::ARRAY)
      return fail(key, "must be an array of integers");
    out.clear();
    out.reserve(v->via.array.size);
    for (uint32_t i = 0; i < v->via.array.size; ++i) {
      const auto& e = v->via.array.ptr[i];
      if (e.type == msgpack::type::POSITIVE_INTEGER &&
          e.via.u64 <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        out.push_back(static_cast<int64_t>(e.via.u64));
      else if (e.type == msgpack::type::NEGATIVE_INTEGER)
        out.push_back(e.via.i64);
      else
        return fail(key, "must be an array of integers");
    }
    return true;
  }

  bool fail(const char* key, const char* what) {
    if (error_ != nullptr)
      *error_ = where_ + key + " " + what;
    return false;
  }

  std::string* error() const { return error_; }
  const std::string& where() const { return where_; }

 private:
  const msgpack::object& map_;
  std::string where_;
  std::string* error_;
};

bool set_error(std::string* error, std::string text) {
  if (error != nullptr)
    *error = std::move(text);
  return false;
}

bool read_ready(map_reader& r, ready& m) {
  int64_t v = 0;
  if (!r.int64("v", v))
    return false;
  if (v != version)
    return set_error(r.error(), "unsupported version " + std::to_string(v) + " (this node speaks 1)");
  return r.str("node", m.node) && r.strings("kinds", m.kinds) && r.int64("credit", m.credit)
         && r.boolean("batch", m.batch, false);
}

bool read_welcome(map_reader& r, welcome& m) {
  if (!r.int64("heartbeat_ms", m.heartbeat_ms) || !r.int64("lease_ms", m.lease_ms))
    return false;
  if (m.heartbeat_ms <= 0)
    return r.fail("heartbeat_ms", "must be positive");
  if (m.lease_ms <= 0)
    return r.fail("lease_ms", "must be positive");
  return r.boolean("batch", m.batch, false);
}

bool read_job(map_reader& r, job& m) {
  return r.str("job_id", m.job_id) && r.str("function", m.function) && r.str("data_json", m.data_json)
         && r.int64("attempt", m.attempt) && r.int64("lease", m.lease) && r.int64("ts_ms", m.ts_ms, false)
         && r.str("url", m.task_url, false) && r.int64("timeout_ms", m.task_timeout_ms, false);
}

bool read_child(const msgpack::object& o, size_t index, std::string* error, child& c) {
  std::string where = "children." + std::to_string(index) + ".";
  if (o.type != msgpack::type::MAP)
    return set_error(error, "children." + std::to_string(index) + " must be a map");
  map_reader r{o, where, error};
  return r.str("job_id", c.job_id) && r.str("function", c.function) && r.str("data_json", c.data_json)
         && r.int64("due_ms", c.due_ms, false);
}

bool read_done(map_reader& r, done& m) {
  if (!r.str("job_id", m.job_id) || !r.int64("lease", m.lease) || !r.str("outcome", m.outcome))
    return false;
  // Deferred travels as transient (see outcome_of): its name is not a wire value.
  const auto o = parse_outcome(m.outcome);
  if (!o || *o == outcome::deferred)
    return r.fail("outcome", "must be \"ok\", \"transient\" or \"permanent\"");
  if (!r.str("result_json", m.result_json, false) || !r.str("error_code", m.error_code, false)
      || !r.str("error_message", m.error_message, false) || !r.int64("http_status", m.http_status, false)
      || !r.int64("retry_after_ms", m.retry_after_ms, false) || !r.int64("duration_ms", m.duration_ms, false)
      || !r.int64("credit", m.credit, false))
    return false;
  if (m.credit < 0)
    return r.fail("credit", "must not be negative");
  const auto* cs = r.find("children");
  if (cs == nullptr)
    return true;
  if (cs->type != msgpack::type::ARRAY)
    return r.fail("children", "must be an array of maps");
  m.children.resize(cs->via.array.size);
  for (uint32_t i = 0; i < cs->via.array.size; ++i)
    if (!read_child(cs->via.array.ptr[i], i, r.error(), m.children[i]))
      return false;
  return true;
}

bool read_credit(map_reader& r, credit& m) {
  if (!r.int64("n", m.n))
    return false;
  if (m.n < 0)
    return r.fail("n", "must not be negative");
  return true;
}

bool read_heartbeat(map_reader& r, heartbeat& m) {
  return r.ints("leases", m.leases, false);
}

bool read_bye(map_reader& r, bye& m) {
  return r.strings("jobs", m.jobs, false) && r.str("reason", m.reason, false);
}

bool read_stats(map_reader& r, node_stats& m) {
  return r.str("json", m.json);
}

bool read_withdraw(map_reader& r, withdraw& m) {
  if (!r.strings("kinds", m.kinds) || !r.str("reason", m.reason) || !r.int64("credit", m.credit) ||
      !r.strings("jobs", m.jobs, false))
    return false;
  if (m.credit < 0)
    return r.fail("credit", "must not be negative");
  return true;
}

bool read_batch(map_reader& r, batch& m) {
  const auto* fs = r.find("frames");
  if (fs == nullptr)
    return r.fail("frames", "is missing");
  if (fs->type != msgpack::type::ARRAY)
    return r.fail("frames", "must be an array of binary frames");
  if (fs->via.array.size > max_batch)
    return r.fail("frames", "holds more than 1024 frames");
  m.frames.reserve(fs->via.array.size);
  for (uint32_t i = 0; i < fs->via.array.size; ++i) {
    const auto& f = fs->via.array.ptr[i];
    if (f.type != msgpack::type::BIN)
      return r.fail("frames", "must be an array of binary frames");
    m.frames.emplace_back(f.via.bin.ptr, f.via.bin.size);
  }
  return true;
}

template <class T, class Reader>
std::optional<message> read_as(map_reader& r, Reader read) {
  T m;
  if (!read(r, m))
    return std::nullopt;
  return message{std::move(m)};
}

std::optional<message> decode_map(const msgpack::object& o, std::string* error) {
  if (o.type != msgpack::type::MAP) {
    set_error(error, "a cluster message must be a msgpack map");
    return std::nullopt;
  }
  map_reader r{o, "", error};
  std::string t;
  if (!r.str("t", t))
    return std::nullopt;
  if (t == "ready")
    return read_as<ready>(r, read_ready);
  if (t == "welcome")
    return read_as<welcome>(r, read_welcome);
  if (t == "job")
    return read_as<job>(r, read_job);
  if (t == "done")
    return read_as<done>(r, read_done);
  if (t == "credit")
    return read_as<credit>(r, read_credit);
  if (t == "heartbeat")
    return read_as<heartbeat>(r, read_heartbeat);
  if (t == "bye")
    return read_as<bye>(r, read_bye);
  if (t == "node_stats")
    return read_as<node_stats>(r, read_stats);
  if (t == "withdraw")
    return read_as<withdraw>(r, read_withdraw);
  if (t == "batch")
    return read_as<batch>(r, read_batch);
  set_error(error, "unknown message type \"" + t.substr(0, 32) + "\"");
  return std::nullopt;
}

}  // namespace

std::string encode(const message& m) {
  msgpack::sbuffer buf;
  packer pk{buf};
  std::visit(encoder{pk}, m);
  return std::string{buf.data(), buf.size()};
}

std::optional<message> decode(const void* data, size_t size, std::string* error) {
  if (data == nullptr || size == 0) {
    set_error(error, "empty frame");
    return std::nullopt;
  }
  try {
    size_t offset = 0;
    msgpack::unpack_limit limit{max_array, max_map, max_str, max_bin, max_ext, max_depth};
    auto handle = msgpack::unpack(static_cast<const char*>(data), size, offset, nullptr, nullptr, limit);
    if (offset != size) {
      set_error(error, "trailing bytes after the message");
      return std::nullopt;
    }
    return decode_map(handle.get(), error);
  } catch (const msgpack::unpack_error& e) {
    set_error(error, std::string{"malformed msgpack: "} + e.what());
  } catch (const msgpack::type_error&) {
    set_error(error, "malformed msgpack: type error");
  } catch (const std::exception& e) {
    set_error(error, std::string{"malformed msgpack: "} + e.what());
  }
  return std::nullopt;
}

std::string encode_batch(const std::vector<std::string>& frames) {
  msgpack::sbuffer buf;
  packer pk{buf};
  encoder::pack_batch(pk, frames);
  return std::string{buf.data(), buf.size()};
}

const char* name_of(const message& m) {
  static constexpr const char* names[] = {"ready",     "welcome", "job",        "done",    "credit",
                                          "heartbeat", "bye",     "node_stats", "withdraw", "batch"};
  static_assert(std::variant_size_v<message> == std::size(names));
  return names[m.index()];
}

}  // namespace klynaa::protocol::cluster

namespace klynaa::protocol::cluster {

const char* to_string(outcome o) {
  switch (o) {
    case outcome::ok: return "ok";
    case outcome::transient: return "transient";
    case outcome::permanent: return "permanent";
    case outcome::deferred: return "deferred";
  }
  return "transient";
}

std::optional<outcome> parse_outcome(std::string_view name) {
  for (auto o : {outcome::ok, outcome::transient, outcome::permanent, outcome::deferred})
    if (name == to_string(o)) return o;
  return std::nullopt;
}

outcome outcome_of(const done& d) {
  const auto o = parse_outcome(d.outcome);
  if (!o || *o == outcome::deferred) return outcome::transient;  // decode() lets neither through
  if (*o == outcome::transient && d.error_code == circuit_open_code) return outcome::deferred;
  return *o;
}

void set_outcome(done& d, outcome o) {
  d.outcome = to_string(o == outcome::deferred ? outcome::transient : o);
  if (o == outcome::deferred) d.error_code = circuit_open_code;
}

}  // namespace klynaa::protocol::cluster
