// Capped doubling: the one backoff curve of Klynaa Jobs. Every wait that grows
// after a failure (a job's retry in the broker, a node registering again, a
// worker restarted, an open circuit breaker whose probe failed, the geo index
// loading again) doubles from a first wait up to a ceiling, and computes it
// here (docs/design.md, "One of each"). Jitter, Retry-After and the like are
// the caller's, on top of this. Pure, thread-safe, never throws.
#pragma once

#include <cstdint>

namespace klynaa::protocol {

/// `first` doubled `doublings` times, at most `cap`: min(cap, first * 2^doublings),
/// computed without overflow for any count. `doublings` <= 0 gives min(first, cap);
/// a `first` <= 0 does not grow (min(first, cap)). Doubling the current wait once
/// is capped_doubling(current, cap, 1).
int64_t capped_doubling(int64_t first, int64_t cap, int64_t doublings);

}  // namespace klynaa::protocol
