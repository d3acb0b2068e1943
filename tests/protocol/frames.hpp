// Test helpers for the protocol suite: build request frames with msgpack-cxx's
// packer (independently of the codec's own encoder) and decode them.
#pragma once

#include <cstring>
#include <string>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "protocol/message.hpp"

namespace klynaa::protocol::test {

using json = nlohmann::json;
/// msgpack-cxx's packer, plus its buffer for writing raw bytes (see pack_float64).
struct packer : msgpack::packer<msgpack::sbuffer> {
  explicit packer(msgpack::sbuffer& b) : msgpack::packer<msgpack::sbuffer>(b), buf(b) {}
  msgpack::sbuffer& buf;
};

/// A float64, always: msgpack-cxx 4.1's pack_double writes 7.0 as the integer 7.
inline void pack_float64(packer& pk, double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  char raw[9] = {static_cast<char>(0xcb)};
  for (int i = 0; i < 8; ++i)
    raw[1 + i] = static_cast<char>((bits >> (56 - 8 * i)) & 0xff);
  pk.buf.write(raw, sizeof raw);
}

inline void pack_str(packer& pk, const std::string& s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

/// Packs JSON keeping its number types: unsigned/integer -> msgpack int
/// (non-negative ones as positive ints, as Python's msgpack does), float -> float64.
inline void pack(packer& pk, const json& j) {
  switch (j.type()) {
    case json::value_t::null: pk.pack_nil(); break;
    case json::value_t::boolean: j.get<bool>() ? pk.pack_true() : pk.pack_false(); break;
    case json::value_t::number_unsigned: pk.pack(j.get<uint64_t>()); break;
    case json::value_t::number_integer: pk.pack(j.get<int64_t>()); break;
    case json::value_t::number_float: pack_float64(pk, j.get<double>()); break;
    case json::value_t::string: pack_str(pk, j.get<std::string>()); break;
    case json::value_t::array:
      pk.pack_array(static_cast<uint32_t>(j.size()));
      for (const auto& e : j) pack(pk, e);
      break;
    case json::value_t::object:
      pk.pack_map(static_cast<uint32_t>(j.size()));
      for (auto it = j.begin(); it != j.end(); ++it) {
        pack_str(pk, it.key());
        pack(pk, it.value());
      }
      break;
    default: pk.pack_nil(); break;
  }
}

/// One msgpack frame holding `j`.
inline std::string frame(const json& j) {
  msgpack::sbuffer buf;
  packer pk(buf);
  pack(pk, j);
  return std::string(buf.data(), buf.size());
}

/// A frame built by hand with the packer: `build(pk)` writes the whole object.
template <class F>
std::string frame_with(F build) {
  msgpack::sbuffer buf;
  packer pk(buf);
  build(pk);
  return std::string(buf.data(), buf.size());
}

constexpr int64_t test_now_ms = 1700000000000;

inline decoded decode(const std::string& f, size_t max_bytes = 1048576) {
  decode_limits limits;
  limits.max_bytes = max_bytes;
  return decode_request(f.data(), f.size(), test_now_ms, limits);
}

inline decoded decode(const json& j) { return decode(frame(j)); }

/// A publish request of `type` with `data` and id "evt-1".
inline json publish(const std::string& type, const json& data) {
  return json{{"v", 1}, {"id", "evt-1"}, {"type", type}, {"data", data}};
}

/// An invoke request of `function` with `data` and id "call-1".
inline json invoke(const std::string& function, const json& data) {
  return json{{"v", 1}, {"op", "invoke"}, {"id", "call-1"}, {"type", function}, {"data", data}};
}

/// A valid pickup.created payload.
inline json pickup_created_data() {
  return json{{"pickup_id", 7}, {"customer_id", 3}, {"lat", 5.6037}, {"lng", -0.187}};
}

}  // namespace klynaa::protocol::test
