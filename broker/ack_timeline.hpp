// Where an accepted request's time goes inside the broker (docs/performance.md,
// "One request's timeline"): each accepted publish is split into stages,
// measured on the steady clock in microseconds, and kept as latency histograms
// of the recent past: two windows of 10 s, so a summary covers the last 10 to
// 20 seconds. /stats serves their percentiles as "ack_timeline"; klynaa-bench
// prints them beside its own ack latency, so a run shows which wait grew.
//
//   received ──queued──▶ batch handed to the writer ──handoff──▶ commit starts
//   ──commit──▶ commit durable ──wakeup──▶ loop takes the outcome ──reply──▶ sent
//
// `total` is received → sent. What is not here is the client's side and the
// kernel's: the bench's ack latency minus `total`.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

#include "protocol/histogram.hpp"

namespace klynaa::broker {

/// The steady clock in microseconds: the timeline's only clock.
inline int64_t steady_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Percentiles of one stage, in microseconds.
struct stage_summary {
  int64_t n = 0, p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};

/// The points of one request's path through the loop and the writer.
struct ack_points {
  int64_t received = 0, submitted = 0, commit_start = 0, commit_end = 0, taken = 0, sent = 0;
};

class ack_timeline {
 public:
  enum stage : int { queued, handoff, commit, wakeup, reply, total, stage_count };

  static const char* name_of(stage s);

  static constexpr int64_t window_us = 10'000'000;

  /// Adds one request's points, taken at `p.sent`; points must be in order (a
  /// zero one skips the stages around it).
  void observe(const ack_points& p);

  /// Every stage's percentiles over the samples of the last 10 to 20 s before
  /// `now_us`, by name; stages with no sample are left out.
  std::map<std::string, stage_summary> summary(int64_t now_us);

 private:
  /// Starts a new window when the current one is over; forgets both windows
  /// when the last one ended more than a window ago.
  void rotate(int64_t now_us);

  protocol::histogram cur_[stage_count], prev_[stage_count];
  int64_t window_start_us_ = 0;
};

}  // namespace klynaa::broker
