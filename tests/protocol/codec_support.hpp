// Helpers of the ingress codec tests (codec_*_test.cpp).
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "frames.hpp"
#include "protocol/message.hpp"
#include "protocol/msgpack_json.hpp"
#include "protocol/version.hpp"

namespace klynaa::protocol::test {

// Asserts a rejection with `code` (and `field` when given); returns the error.
inline error_info rejected(const decoded& d, std::string_view code, std::string_view field = {}) {
  REQUIRE_FALSE(d.req);
  REQUIRE(d.error);
  CHECK(d.error->code == code);
  if (!field.empty())
    CHECK(d.error->field == field);
  CHECK_FALSE(d.error->message.empty());
  return *d.error;
}

inline request accepted(const decoded& d) {
  if (d.error)
    FAIL("rejected: " << d.error->code << " " << d.error->field << ": " << d.error->message);
  REQUIRE(d.req);
  return *d.req;
}

// A map with `n` levels of nesting in total: the top-level request map (level 1),
// `data` (level 2), then n - 2 arrays under data.deep; the innermost is empty
// when `empty_innermost`.
inline std::string nested_frame(int n, bool empty_innermost) {
  return frame_with([&](packer& pk) {
    pk.pack_map(4);
    pack_str(pk, "v");
    pk.pack(1);
    pack_str(pk, "id");
    pack_str(pk, "deep-1");
    pack_str(pk, "type");
    pack_str(pk, "cleanupData");
    pack_str(pk, "data");
    pk.pack_map(1);
    pack_str(pk, "deep");
    for (int level = 3; level <= n; ++level)
      pk.pack_array(level == n && empty_innermost ? 0 : 1);
    if (!empty_innermost)
      pk.pack(42);
  });
}

}  // namespace klynaa::protocol::test
