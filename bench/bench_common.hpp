// Small helpers of klynaa-bench (bench/klynaa_bench.cpp): clocks, rounding, a
// hash for pseudo-random payloads, failing with a message, and what the JSON
// line says about the machine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

namespace klynaa::bench {

using json = nlohmann::json;

/// CLOCK_MONOTONIC in ns.
int64_t mono_ns();
/// The wall clock in ms since the epoch.
int64_t wall_ms();
/// `v` rounded to 3 decimals.
double round3(double v);
/// ns as ms with 3 decimals.
double ns_to_ms(uint64_t ns);
/// A 64-bit mix (splitmix64's finaliser): the pseudo-random source of payloads.
uint64_t splitmix64(uint64_t x);

/// Prints "klynaa-bench: MSG" on stderr, stops a --start broker and exits `code`.
[[noreturn]] void fail(int code, const std::string& msg);

/// The whole file; empty when it cannot be read.
std::string read_text(const std::string& path);
/// The 1, 5 and 15 minute load averages; null when unknown.
json loadavg();
/// Cores, CPU model, kernel and load average.
json machine();
/// {VmRSS, VmHWM} of a process in MiB, from /proc/{pid}/status.
std::optional<std::pair<double, double>> rss_mb(int pid);

}  // namespace klynaa::bench
