// klynaa-upstream's HTTP/1.1 request parser (bench/fake_upstream.cpp):
// request line, header fields, Content-Length or chunked bodies, Expect:
// 100-continue, keep-alive; a malformed request gets 400 (413 for a body over
// 1 MiB, 431 for a header section over 64 KiB, 501 and 505 for what it does
// not speak). Pure functions of the bytes received so far.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "bench/upstream_routes.hpp"

namespace klynaa::upstream {

/// ASCII lower case of `ch`.
inline char lower(char ch) { return (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch; }

struct h1_parse {
  enum class state { need_more, complete, error } st = state::need_more;
  int status = 0;  ///< error: 400, 413, 431, 501 or 505
  std::string why;
  request req;
  size_t consumed = 0;
  bool keep_alive = true;
  bool head = false;
  bool expect_continue = false;  ///< need_more with the headers read: the client may wait for 100
};

/// Parses one request from the front of `buf` (leading empty lines already gone):
/// complete (with the bytes it took), need_more, or an error with its status.
h1_parse parse_h1(std::string_view buf);

}  // namespace klynaa::upstream
