// The frames klynaa-bench sends and reads (docs/ingress-protocol.md, "Request"
// and "Reply"), packed by hand for speed: valid pseudo-random data for every
// event type and function, and the few reply fields the hot path needs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <msgpack.hpp>

namespace klynaa::bench {

/// The function whose jobs an event type creates (docs/events-and-functions.md,
/// "Events"); a function name maps to itself. Empty when unknown.
std::string default_function(const std::string& type);

/// One request frame: publish of `type`, or invoke of `function`, with data
/// derived from `h` (a hash of the request's sequence number, so a resent request
/// carries the same data) and ids in [1, keys].
void build_request(msgpack::sbuffer& buf, bool invoke, const std::string& id,
                   const std::string& type, const std::string& function, uint64_t h,
                   uint64_t keys, int64_t timeout_ms);

/// The fields of a reply the hot path needs, read without building a protocol::reply.
struct reply_view {
  std::string_view id;
  std::string_view status;
  int64_t retry_after_ms = -1;
};

/// Fills `r` from a decoded reply; false when it is not a map with a status.
bool read_reply(const msgpack::object& o, reply_view& r);

}  // namespace klynaa::bench
