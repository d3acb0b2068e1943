#include "broker/backoff.hpp"

#include <algorithm>

#include "protocol/backoff.hpp"

namespace klynaa::broker {

int64_t backoff_delay(const protocol::retry_policy& p, int64_t attempts, int64_t retry_after_ms,
                      std::mt19937_64& rng) {
  // Full jitter (AWS architecture blog): uniform in [0, min(max, base * 2^(n-1))].
  const int64_t cap = protocol::capped_doubling(p.base_delay_ms, p.max_delay_ms, attempts - 1);
  std::uniform_int_distribution<int64_t> dist(0, std::max<int64_t>(0, cap));
  int64_t d = dist(rng);
  // The downstream's own wait is not ours to shorten: max_delay_ms bounds the
  // backoff we choose, not a Retry-After (docs/reliability.md).
  if (retry_after_ms > 0) d = std::max(d, std::min(retry_after_ms, max_retry_after_ms));
  return d;
}

int64_t circuit_open_delay(int64_t retry_after_ms) {
  return std::clamp<int64_t>(retry_after_ms, 100, max_retry_after_ms);
}

}  // namespace klynaa::broker
