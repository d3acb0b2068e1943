// A client of the broker's admin endpoint for `klynaa stats` and `klynaa dlq`.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace klynaa::cli {

/// `method` ("GET"/"POST") `path` on the admin endpoint `addr` ("host:port"),
/// with the bearer token when set. The answer's JSON, or nullopt and `err`
/// (no answer, a non-2xx status with the broker's message, or not JSON).
std::optional<nlohmann::json> admin_call(const std::string& method, const std::string& addr,
                                         const std::string& token, const std::string& path,
                                         std::string& err);

/// `s` percent-encoded for a query string.
std::string url_encode(const std::string& s);

}  // namespace klynaa::cli
