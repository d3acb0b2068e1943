// Bounded msgpack unpacking and msgpack <-> JSON conversion (see msgpack_json.hpp).
#include "protocol/msgpack_json.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace klynaa::protocol {

namespace {

// Structural pass: msgpack::parse with this visitor walks the frame without
// building anything, so a header claiming 2^32 elements costs nothing here. It
// stops at the first container deeper than max_depth.
struct structure_visitor : msgpack::null_visitor {
  explicit structure_visitor(size_t max) : max_depth(max) {}
  size_t max_depth;
  size_t depth = 0;
  bool too_deep = false;
  bool bad_bytes = false;
  bool short_frame = false;

  bool enter() {
    if (++depth > max_depth) {
      too_deep = true;
      return false;  // stops the parser: its stack never grows past max_depth + 1
    }
    return true;
  }
  bool start_array(uint32_t) { return enter(); }
  bool start_map(uint32_t) { return enter(); }
  bool end_array() { --depth; return true; }
  bool end_map() { --depth; return true; }
  void parse_error(size_t, size_t) { bad_bytes = true; }
  void insufficient_bytes(size_t, size_t) { short_frame = true; }
};

constexpr size_t max_json_depth = 64;

bool fail(conversion_error& err, const std::string& path, std::string message) {
  err.path = path;
  err.message = std::move(message);
  return false;
}

/// The path is one buffer for the whole walk: a child appends ".key" (or
/// ".index"), recurses and cuts it off again, so that a wide value costs its
/// size, not size x path length (a long key holding a long array was quadratic).
class path_segment {
 public:
  path_segment(std::string& path, std::string_view key) : path_(path), size_(path.size()) {
    if (!path_.empty())
      path_ += '.';
    path_.append(key.data(), key.size());
  }
  ~path_segment() { path_.resize(size_); }
  path_segment(const path_segment&) = delete;
  path_segment& operator=(const path_segment&) = delete;

 private:
  std::string& path_;
  size_t size_;
};

bool to_json_at(const msgpack::object& o, std::string& path, size_t depth, nlohmann::json& out,
                conversion_error& err);

bool map_to_json(const msgpack::object& o, std::string& path, size_t depth, nlohmann::json& out,
                 conversion_error& err) {
  out = nlohmann::json::object();
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const auto& kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR)
      return fail(err, path,
                  path + " must have string keys only, but one key is " + describe(kv.key));
    std::string key(kv.key.via.str.ptr, kv.key.via.str.size);
    if (!is_valid_utf8(key))
      return fail(err, path, path + " has a key that is not valid UTF-8: " + quote(key));
    path_segment sub(path, key);
    if (out.contains(key))
      return fail(err, path, path + " appears twice; send each key once");
    nlohmann::json value;
    if (!to_json_at(kv.val, path, depth + 1, value, err))
      return false;
    out[key] = std::move(value);
  }
  return true;
}

bool to_json_at(const msgpack::object& o, std::string& path, size_t depth, nlohmann::json& out,
                conversion_error& err) {
  switch (o.type) {
    case msgpack::type::NIL:
      out = nullptr;
      return true;
    case msgpack::type::BOOLEAN:
      out = o.via.boolean;
      return true;
    case msgpack::type::POSITIVE_INTEGER:
      out = static_cast<std::uint64_t>(o.via.u64);
      return true;
    case msgpack::type::NEGATIVE_INTEGER:
      out = static_cast<std::int64_t>(o.via.i64);
      return true;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      if (!std::isfinite(o.via.f64))
        return fail(err, path, path + " must be a finite number, got " + describe(o));
      out = o.via.f64;
      return true;
    case msgpack::type::STR: {
      std::string s(o.via.str.ptr, o.via.str.size);
      if (!is_valid_utf8(s))
        return fail(err, path, path + " must be valid UTF-8 text, got " + quote(s));
      out = std::move(s);
      return true;
    }
    case msgpack::type::BIN:
      return fail(err, path, path + " is binary data; send text, numbers, booleans, "
                                    "nil, arrays or maps");
    case msgpack::type::EXT:
      return fail(err, path, path + " is a msgpack extension value; send text, numbers, "
                                    "booleans, nil, arrays or maps");
    case msgpack::type::ARRAY: {
      if (depth >= max_json_depth)
        return fail(err, path, path + " nests deeper than 64 levels");
      out = nlohmann::json::array();
      for (uint32_t i = 0; i < o.via.array.size; ++i) {
        nlohmann::json value;
        path_segment sub(path, std::to_string(i));
        if (!to_json_at(o.via.array.ptr[i], path, depth + 1, value, err))
          return false;
        out.push_back(std::move(value));
      }
      return true;
    }
    case msgpack::type::MAP:
      if (depth >= max_json_depth)
        return fail(err, path, path + " nests deeper than 64 levels");
      return map_to_json(o, path, depth, out, err);
  }
  return fail(err, path, path + " has an unknown msgpack type");
}

}  // namespace

unpack_status unpack_frame(const void* data, size_t size, size_t max_depth,
                           msgpack::object_handle& out) {
  if (size == 0)
    return unpack_status::empty;
  const char* bytes = static_cast<const char*>(data);
  try {
    structure_visitor check(max_depth);
    size_t off = 0;
    if (!msgpack::parse(bytes, size, off, check)) {
      if (check.too_deep)
        return unpack_status::too_deep;
      if (check.bad_bytes)
        return unpack_status::invalid;
      return unpack_status::incomplete;
    }
    if (off != size)
      return unpack_status::trailing;
    // Every element the structural pass saw is really present, so no count can
    // exceed the frame's size; the limits make that a hard bound anyway.
    const msgpack::unpack_limit limit(size, size, size, size, size, max_depth);
    off = 0;
    out = msgpack::unpack(bytes, size, off, nullptr, nullptr, limit);
    return off == size ? unpack_status::ok : unpack_status::trailing;
  } catch (const msgpack::depth_size_overflow&) {
    return unpack_status::too_deep;
  } catch (const msgpack::insufficient_bytes&) {
    return unpack_status::incomplete;
  } catch (const std::bad_alloc&) {
    return unpack_status::invalid;
  } catch (const std::exception&) {
    return unpack_status::invalid;
  }
}

void pack_float64(msgpack::sbuffer& out, double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  char buf[9];
  buf[0] = static_cast<char>(0xcb);
  for (int i = 0; i < 8; ++i)
    buf[1 + i] = static_cast<char>((bits >> (56 - 8 * i)) & 0xff);  // big-endian
  out.write(buf, sizeof buf);
}

void pack_json(msgpack::sbuffer& out, const nlohmann::json& j) {
  using vt = nlohmann::json::value_t;
  msgpack::packer<msgpack::sbuffer> pk(out);
  switch (j.type()) {
    case vt::null:
    case vt::discarded:
      pk.pack_nil();
      return;
    case vt::boolean:
      if (j.get<bool>())
        pk.pack_true();
      else
        pk.pack_false();
      return;
    case vt::number_unsigned:
      pk.pack_uint64(j.get<std::uint64_t>());
      return;
    case vt::number_integer:
      pk.pack_int64(j.get<std::int64_t>());  // non-negative values come out as positive ints
      return;
    case vt::number_float:
      pack_float64(out, j.get<double>());
      return;
    case vt::string: {
      const auto& s = j.get_ref<const std::string&>();
      pk.pack_str(static_cast<uint32_t>(s.size()));
      pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
      return;
    }
    case vt::binary: {
      const auto& b = j.get_binary();
      pk.pack_bin(static_cast<uint32_t>(b.size()));
      pk.pack_bin_body(reinterpret_cast<const char*>(b.data()), static_cast<uint32_t>(b.size()));
      return;
    }
    case vt::array:
      pk.pack_array(static_cast<uint32_t>(j.size()));
      for (const auto& e : j)
        pack_json(out, e);
      return;
    case vt::object:
      pk.pack_map(static_cast<uint32_t>(j.size()));
      for (auto it = j.begin(); it != j.end(); ++it) {
        pk.pack_str(static_cast<uint32_t>(it.key().size()));
        pk.pack_str_body(it.key().data(), static_cast<uint32_t>(it.key().size()));
        pack_json(out, it.value());
      }
      return;
  }
}

std::string json_to_msgpack(const nlohmann::json& j) {
  msgpack::sbuffer buf;
  pack_json(buf, j);
  return std::string(buf.data(), buf.size());
}

bool to_json(const msgpack::object& o, const std::string& path, nlohmann::json& out,
             conversion_error& err) {
  std::string buffer = path;  // grows and shrinks with the walk (path_segment)
  return to_json_at(o, buffer, 0, out, err);
}

std::string format_double(double d) {
  if (std::isnan(d))
    return "NaN";
  if (std::isinf(d))
    return d > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d)
      break;
  }
  std::string s(buf);
  if (s.find_first_of(".eE") == std::string::npos)
    s += ".0";
  return s;
}

std::string quote(std::string_view s, size_t max_chars) {
  static const char hex[] = "0123456789abcdef";
  std::string out = "\"";
  size_t n = 0;
  for (unsigned char c : s) {
    if (n++ == max_chars) {
      out += "...";
      break;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  out += '"';
  return out;
}

std::string describe(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return o.via.boolean ? "true" : "false";
    case msgpack::type::POSITIVE_INTEGER: return std::to_string(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return std::to_string(o.via.i64);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return format_double(o.via.f64);
    case msgpack::type::STR: return quote(std::string_view(o.via.str.ptr, o.via.str.size));
    case msgpack::type::BIN: return "binary data";
    case msgpack::type::EXT: return "an extension value";
    case msgpack::type::ARRAY: return "an array";
    case msgpack::type::MAP: return "a map";
  }
  return "an unknown value";
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len)
      return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80)
        return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static const uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

}  // namespace klynaa::protocol
