// The build's version: the CMake project version and, when the tree was built
// from a git checkout, the commit (cmake/version.cmake writes both at build
// time). Shown by `klynaa --version`, in the ingress's `pong`, in the admin
// endpoint's /stats and as the metric klynaa_build_info (docs/operations.md).
#pragma once

#include <string>
#include <string_view>

#include "protocol/message.hpp"

namespace klynaa::protocol {

/// The project version, e.g. "0.2.0" (CMakeLists.txt `project(... VERSION)`).
std::string_view build_version();

/// The git commit the binary was built from (12 hex digits), or "" when it was
/// built outside a git checkout (a source tarball).
std::string_view build_commit();

/// "0.2.0 (commit 1a2b3c4d5e6f)", or "0.2.0" without a commit.
std::string version_text();

/// The reply to a `ping`: status pong, the request's `id` (nil when it had
/// none) and the broker's version_text() (docs/ingress-protocol.md).
reply pong_reply(const std::string& request_id);

}  // namespace klynaa::protocol
