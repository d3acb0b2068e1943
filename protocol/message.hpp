// Ingress requests and replies (docs/ingress-protocol.md) as C++ values, and the codec that
// turns msgpack frames into validated requests and replies into frames.
// Spec: docs/ingress-protocol.md. No I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace klynaa::protocol {

enum class op { publish, invoke, ping };

/// A request that passed every check of docs/ingress-protocol.md, "Checks, in order".
struct request {
  op operation = op::publish;
  std::string id;                 ///< empty for ping
  std::string type;               ///< event type or function name; empty for ping
  int64_t ts_ms = 0;              ///< `ts`, or the time received when absent
  nlohmann::json data = nlohmann::json::object();  ///< validated; unknown extra fields kept
  int64_t timeout_ms = 30000;     ///< invoke only
};

/// Rejection codes (docs/ingress-protocol.md, "Reply"), in no particular order.
enum class error_code {
  malformed,
  unsupported_version,
  missing_field,
  invalid_field,
  unknown_type,
  too_large,
  unauthorized,
  overloaded,
  shutting_down,
};

/// "malformed", "unsupported_version", ...
std::string_view to_string(error_code c);

/// The `error` map of a reply. `code` is a rejection code (to_string(error_code))
/// for `rejected`, or "permanent"/"exhausted" for `failed`.
struct error_info {
  std::string code;
  std::string message;            ///< a sentence a person can act on
  std::string field;              ///< dotted path such as "data.lat"; empty = none
  std::optional<int> http_status; ///< failed: when Django answered
};

enum class reply_status { accepted, duplicate, rejected, ok, failed, timeout, pong };

/// "accepted", "duplicate", ...
std::string_view to_string(reply_status s);

struct reply {
  std::optional<std::string> id;       ///< nil when the request's id could not be read
  reply_status status = reply_status::accepted;
  std::vector<std::string> jobs;       ///< accepted, duplicate
  nlohmann::json result;               ///< ok (an object)
  std::optional<error_info> error;     ///< rejected, failed
  std::optional<int64_t> retry_after_ms;  ///< rejected with overloaded / shutting_down
  /// pong: the broker's version, e.g. "0.2.0 (commit 1a2b3c4d5e6f)"
  /// (docs/ingress-protocol.md); clients that do not know the key ignore it.
  std::optional<std::string> version;
};

/// The outcome of decoding and validating one request frame: exactly one of
/// `req` and `error` is set. `id` is the request's `id` whenever the map could be
/// read and `id` was a string (even an invalid one), for echoing in a rejection.
struct decoded {
  std::optional<request> req;
  std::optional<error_info> error;
  std::optional<std::string> id;
};

struct decode_limits {
  size_t max_bytes = 1048576;  ///< frames larger than this are `too_large`
};

/// Decodes and validates one request frame in the order of
/// docs/ingress-protocol.md, "Checks, in order":
/// size, msgpack decoding (depth > 32 is malformed), v, op, id, type, then the
/// data fields in the order of §2's tables. `now_ms` is the default `ts`.
/// Never throws.
decoded decode_request(const void* data, size_t size, int64_t now_ms, const decode_limits& limits);

/// A rejection reply for `code`, with `message` and optional `field`.
reply rejection(std::optional<std::string> id, error_code code, std::string message,
                std::string field = {});

/// Encodes a reply as one msgpack frame (keys as in docs/ingress-protocol.md,
/// "Reply"; absent parts omitted).
std::string encode_reply(const reply& r);

/// Client side: encodes a request (for the CLI, tests and benchmarks).
std::string encode_request(const request& r);

/// Client side: decodes a reply frame; nullopt when it is not a reply map.
std::optional<reply> decode_reply(const void* data, size_t size);

/// JSON form of a reply, as `klynaa invoke` and `klynaa publish` print it.
nlohmann::json reply_to_json(const reply& r);

}  // namespace klynaa::protocol
