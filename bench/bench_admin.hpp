// klynaa-bench's view of the broker's admin endpoint (docs/operations.md,
// "Watching it"): /stats, and the counts of one function in it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace httplib {
class Client;
}

namespace klynaa::bench {

/// An HTTP client of HOST:PORT (an "http://" prefix and trailing slashes are
/// ignored); exits 2 naming --admin when the address has no port.
struct admin_client {
  explicit admin_client(std::string addr);
  ~admin_client();

  /// GET /stats: the JSON object, or nullopt when there is no 200 with one.
  std::optional<nlohmann::json> stats();

  std::unique_ptr<httplib::Client> cli;
};

/// One function's jobs and outcomes in /stats.
struct fn_counts {
  int64_t ready = 0, running = 0, retry_wait = 0, ok = 0, retry = 0, dead = 0;
};

/// The counts of `fn` in a /stats answer; zeros when it is not there.
fn_counts counts_of(const nlohmann::json& stats, const std::string& fn);

}  // namespace klynaa::bench
