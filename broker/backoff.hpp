// Retry backoff (contract §3, §8): exponential with full jitter, Retry-After honoured.
#pragma once

#include <cstdint>
#include <random>

#include "protocol/config.hpp"

namespace klynaa::broker {

/// The delay before the next attempt of a job that has made `attempts` attempts
/// (1 = the first failed): uniform in [0, min(max_delay_ms, base_delay_ms *
/// 2^(attempts-1))] ("full jitter"), and at least `retry_after_ms` (the
/// downstream's Retry-After; <= 0 = none) capped at max_delay_ms.
int64_t backoff_delay(const protocol::retry_policy& p, int64_t attempts, int64_t retry_after_ms,
                      std::mt19937_64& rng);

}  // namespace klynaa::broker
