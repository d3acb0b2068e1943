// klynaa-bench's load mode (docs/performance.md, "klynaa-bench, load mode"): N
// DEALER connections, one thread each, every one keeping up to W requests in
// flight, flat out or paced open-loop; then waiting on /stats for the jobs, and
// ONE JSON line of figures.
#pragma once

#include "bench/bench_options.hpp"

namespace klynaa::bench {

/// Runs the load `o` describes against the broker it names (or --start spawns)
/// and prints ONE JSON line; returns the exit code (1 without a figure when the
/// run failed, 2 for bad options).
int run_load(options& o);

}  // namespace klynaa::bench
