// klynaa-bench --ceilings: what the machine itself allows (docs/performance.md,
// "klynaa-bench --ceilings"): fsync latency, SQLite WAL commits, Klynaa's own
// store, and ZeroMQ DEALER/ROUTER request+reply messages/s over 127.0.0.1.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "bench/bench_options.hpp"
#include "protocol/histogram.hpp"

namespace klynaa::bench {

using protocol::histogram;

/// write(4 KiB) + fdatasync latencies, in ns, on a file in `dir` (removed
/// afterwards); empty when `samples` is 0. Exits 1 when the file cannot be written.
histogram measure_fsync(const std::string& dir, int samples);

/// {samples, p50, p99, max} of fsync latencies, in ms.
nlohmann::json fsync_json(const histogram& h);

/// Measures every ceiling in the data dir (else the temp dir) and prints ONE
/// JSON line; returns the exit code.
int run_ceilings(options& o);

}  // namespace klynaa::bench
