// Retry backoff (docs/reliability.md, docs/configuration.md [retry]): exponential
// with full jitter, Retry-After honoured.
#pragma once

#include <cstdint>
#include <random>

#include "protocol/config.hpp"

namespace klynaa::broker {

/// The longest wait a downstream's Retry-After (or a node's open circuit
/// breaker) can impose on a job before its next attempt: 1 hour.
constexpr int64_t max_retry_after_ms = 3600000;

/// The delay before the next attempt of a job that has made `attempts` attempts
/// (1 = the first failed): uniform in [0, min(max_delay_ms, base_delay_ms *
/// 2^(attempts-1))] ("full jitter"), and at least `retry_after_ms` (the
/// downstream's Retry-After on a 429 or 503; <= 0 = none) — even when that is
/// longer than max_delay_ms, which bounds only the backoff of our own choosing —
/// up to max_retry_after_ms.
int64_t backoff_delay(const protocol::retry_policy& p, int64_t attempts, int64_t retry_after_ms,
                      std::mt19937_64& rng);

/// The wait of a job refused by a node's open circuit breaker ("circuit_open"),
/// whose `retry_after_ms` says when the breaker lets a probe through: that, at
/// least 100 ms (no busy loop) and at most max_retry_after_ms.
int64_t circuit_open_delay(int64_t retry_after_ms);

}  // namespace klynaa::broker
