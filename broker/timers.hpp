// Timers and schedules: when the broker loop does its periodic duties, how long
// it may sleep in poll, when a drain is over, and the write request of a schedule
// firing. Pure: every call takes `now` (clock.hpp).
//
// The loop's duties and their periods:
//   tick            every 50 ms, or at once when a job timer or a schedule is due
//   disk check      every second (docs/reliability.md, "What each fault does":
//                   ingress.min_free_disk_mb)
//   stats snapshot  every 250 ms (docs/operations.md, "Watching it")
//   history point   every 5 s, the last 10 minutes (the dashboard's charts)
// A poll waits 100 ms at most, less when a timer is due sooner.
#pragma once

#include <cstdint>

#include "broker/queue.hpp"
#include "broker/schedules.hpp"
#include "broker/store.hpp"

namespace klynaa::broker {

class loop_timers {
 public:
  static constexpr int64_t max_poll_ms = 100;
  static constexpr int64_t tick_ms = 50;
  static constexpr int64_t disk_check_ms = 1000;
  static constexpr int64_t stats_ms = 250;
  static constexpr int64_t history_ms = 5000;

  /// How long the poll may wait at `now` when the earliest job timer is at
  /// `job_due` and the next schedule at `schedule_due` (INT64_MAX = none).
  static int64_t poll_timeout(int64_t now, int64_t job_due, int64_t schedule_due);

  /// Whether to tick now; if so, the tick counts as done at `now`.
  bool take_tick(int64_t now, int64_t job_due, int64_t schedule_due);
  /// Whether the disk is due for a check; if so, it counts as done at `now`.
  bool take_disk_check(int64_t now) { return take(last_disk_check_, disk_check_ms, now); }
  /// Whether a stats snapshot is due; if so, it counts as done at `now`.
  bool take_stats(int64_t now) { return take(last_stats_, stats_ms, now); }
  /// Whether a history point is due; if so, it counts as done at `now`.
  bool take_history(int64_t now) { return take(last_history_, history_ms, now); }
  /// A disk check or stats snapshot made outside the periods (at open()).
  void disk_checked(int64_t now) { last_disk_check_ = now; }
  void stats_published(int64_t now) { last_stats_ = now; }

 private:
  static bool take(int64_t& last, int64_t period, int64_t now);
  int64_t last_tick_ = 0;
  int64_t last_disk_check_ = 0;
  int64_t last_stats_ = 0;
  int64_t last_history_ = 0;
};

/// Jobs running on nodes now, over every function.
int64_t running_jobs(const state_counts& counts);

/// Whether a draining broker may stop at `now` (docs/operations.md, "Signals";
/// docs/cluster-protocol.md, "Graceful shutdown"): no job runs any more, or the
/// grace period is over, or a second signal said stop; and the open batch is
/// committed — unless the store cannot commit and the broker is told to stop:
/// the unstored state changes are only lost progress (those jobs run again after
/// the restart), never an acknowledged request.
bool drain_over(int64_t running, int64_t now, int64_t drain_deadline, bool stopping, bool batch_empty,
                bool store_failing, bool writer_busy);

/// A schedule firing as a write request with the deterministic id
/// `schedule:{name}:{UTC instant}` and one job `{id}#1` (schedules.hpp): the
/// store's request dedup makes it fire once per scheduled time, whatever
/// restarts or other brokers do. `seq`: the job's seq.
new_request firing_request(const firing& f, int64_t now, int64_t seq);

}  // namespace klynaa::broker
