// msgpack-cxx helpers shared by the ingress codec (codec.cpp) and anything else
// that speaks msgpack: a bounded, exception-free unpack of one frame, conversion
// between msgpack objects and nlohmann::json, and short descriptions of values
// for error messages. No I/O; every function is thread-safe (no shared state).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

namespace klynaa::protocol {

/// How unpack_frame ended.
enum class unpack_status {
  ok,          ///< exactly one complete msgpack object filled the frame
  empty,       ///< zero bytes
  invalid,     ///< bytes that are not msgpack (e.g. the reserved byte 0xc1)
  incomplete,  ///< the object ends after the frame does
  trailing,    ///< a complete object followed by more bytes
  too_deep,    ///< containers nested deeper than `max_depth` (the outermost is depth 1)
};

/// Unpacks one msgpack object that must fill `data[0, size)` exactly, keeping
/// containers at most `max_depth` deep (the outermost container is depth 1; an
/// empty container counts too). A structural pass without allocation runs first,
/// so the real unpack (with msgpack::unpack_limit bounds) only allocates for
/// elements that are really present: memory stays proportional to `size` however
/// large the counts a hostile frame claims. On `ok`, `out` holds the object (it
/// points into `out`'s zone: keep `out` alive while using it). Never throws.
unpack_status unpack_frame(const void* data, size_t size, size_t max_depth,
                           msgpack::object_handle& out);

/// Appends `d` as a msgpack float64, always. (msgpack-cxx 4.1's packer::pack_double
/// writes an integral double such as 7.0 as the integer 7, which would turn a JSON
/// 7.0 into a valid id and lose the float type on a round trip.) A packer on the
/// same buffer may be used before and after: packers append without buffering.
void pack_float64(msgpack::sbuffer& out, double d);

/// Appends `j` to `out`: objects as maps with str keys, strings as str, unsigned
/// and signed integers as msgpack ints, floats as float64 (pack_float64), booleans,
/// null as nil, arrays, binary as bin. Never throws except std::bad_alloc.
void pack_json(msgpack::sbuffer& out, const nlohmann::json& j);

/// `j` as one msgpack frame (pack_json into a fresh buffer).
std::string json_to_msgpack(const nlohmann::json& j);

/// Why to_json could not convert a value: the dotted path of the value (e.g.
/// "data.items.2") and a sentence saying what was wrong.
struct conversion_error {
  std::string path;
  std::string message;
};

/// Converts `o` to JSON: str -> string (must be valid UTF-8), positive int ->
/// unsigned, negative int -> integer, float -> float (must be finite), bool, nil
/// -> null, array, map with unique str keys -> object. bin, ext, non-string or
/// repeated map keys, invalid UTF-8, NaN/Infinity, or nesting deeper than 64 fail
/// with the path below `path` where they occur. Never throws except bad_alloc.
/// Returns true and sets `out` on success; false and sets `err` otherwise.
bool to_json(const msgpack::object& o, const std::string& path, nlohmann::json& out,
             conversion_error& err);

/// A short description of a value for error messages: `91.5`, `7.0` (a float),
/// `-3`, `"abc"` (quoted, escaped, truncated to 40 characters), `true`, `nil`,
/// `an array`, `a map`, `binary data`, `an extension value`.
std::string describe(const msgpack::object& o);

/// `s` quoted for an error message: non-printable and non-ASCII bytes escaped as
/// \xNN, cut to `max_chars` with "..." appended, so the message stays valid UTF-8.
std::string quote(std::string_view s, size_t max_chars = 40);

/// A double as the shortest text that reads back to it, with ".0" when it would
/// otherwise look like an integer ("91.5", "7.0", "1e+300", "NaN", "Infinity").
std::string format_double(double d);

/// Whether `s` is valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace klynaa::protocol
