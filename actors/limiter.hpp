// Adaptive in-flight limits for calls to downstreams (Django's API, FCM, SNS, a
// webhook host): how many calls of one function may be outstanding at one
// downstream at once, learned from the calls' outcomes and latencies instead of
// configured (docs/reliability.md, "Adaptive in-flight limits").
//
// The algorithm, per (downstream, function) pair — a gradient on a latency
// floor, as in Envoy's adaptive concurrency filter and Netflix's Gradient2Limit,
// plus a multiplicative cut on drops, as in Netflix's AIMDLimit:
//  - Successful calls are judged in windows: a window closes once it holds
//    `window_min_samples` calls that started in it and `min_window_ms` (or two
//    floors) have passed. Its median latency is compared with the floor: the
//    lowest window median seen since the floor was last re-measured.
//  - Median within `tolerance` × floor: the limit grows by sqrt(limit) (by 1
//    just below where it last had to be cut) if the window used at least
//    `grow_utilization` of it; a limit nobody uses does not grow. Until its
//    first cut a limit is in slow start (TCP's, as in Netflix's VegasLimit):
//    it doubles per such window instead, so it finds a downstream's capacity
//    in a few windows rather than dozens.
//  - Median above: the limit is cut in proportion, to limit × tolerance × floor
//    / median, by at most half per window.
//  - 429/503 or a timeout: the limit is cut to limit × `backoff_ratio` at once,
//    but once per episode: an outcome counts only if its call started after the
//    last cut, so a burst of failures from calls already in flight cuts once.
//    The cut that ends slow start goes back to half the limit instead: the
//    last limit a window showed the downstream could take.
//  - A latency cut by half (the median was at least 2 × tolerance × floor)
//    that does not help shows the downstream got slower by itself: queueing we
//    cause halves with our concurrency. If the window after it (calls sent at the lower limit once the
//    old limit's queue has drained, one old median after the cut) still has a
//    median of at least `unmoved_share` of the one that caused the cut, that median is the
//    new floor at once and the cut is undone.
//  - The floor is re-measured at low concurrency: every `probe_interval_ms`
//    one window runs at half the limit and its median becomes the floor (a
//    floor learnt under load holds queueing, and would let the limit drift up).
//    A floor that no longer holds (the downstream got slower for good) pulls
//    the limit down to min_limit; after `floor_reset_windows` windows there the
//    floor is re-measured the same way at once, and the limit grows again.
//  - Retry-After pauses new calls (pause_until); the limit stays in
//    [min_limit, max_limit] always.
//
// Pure and deterministic: no threads, no clock read inside (time comes in as
// milliseconds of a monotonic clock, latencies in microseconds), so the tests
// simulate downstreams with a fake clock. Not thread-safe: one owner (the
// node's HTTP loop) calls everything; the circuit breaker (actors/breaker.hpp)
// stays in front of it for outages.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace klynaa::actors {

/// How a call that try_acquire() let through ended, for on_done().
enum class call_outcome {
  ok,          ///< an answer the downstream produced normally (2xx, and 4xx other than 429)
  overloaded,  ///< 429 or 503: the downstream sheds load; cuts the limit
  timeout,     ///< no answer within our deadline; cuts the limit
  failed,      ///< any other error (connection refused, 500, bad body): no adaptation
  cancelled,   ///< the caller gave up (shutdown, job cancelled): ignored
};

struct adaptive_limit_options {
  int64_t min_limit = 1;       ///< the limit never goes below (at least 1)
  int64_t max_limit = 1000;    ///< the limit never goes above (at least min_limit)
  int64_t initial_limit = 10;  ///< the limit at start: low, it grows (clamped to [min, max])
  /// A window's median latency up to tolerance × floor counts as "near the
  /// floor" (grow); above it the limit is cut. Envoy's default buffer is 25 %
  /// (1.25), Gradient2's 1.5. At least 1.
  double tolerance = 1.25;
  /// 429/503/timeout: limit × backoff_ratio, once per episode. Netflix's
  /// AIMDLimit default; in [0.5, 1). Lower cuts harder but wastes capacity
  /// (the limit spends longer below it: docs/reliability.md).
  double backoff_ratio = 0.9;
  /// The limit grows only if a window's peak in-flight reached this share of
  /// it (Netflix uses 0.5). In (0, 1].
  double grow_utilization = 0.75;
  int64_t window_min_samples = 10;  ///< successful calls a window needs (Netflix: 10)
  int64_t min_window_ms = 100;      ///< a window lasts at least this, and two floors
  /// Windows in a row that ask for a cut at min_limit before the floor is re-measured
  /// (Envoy re-measures its minRTT after 5 windows at its minimum).
  int64_t floor_reset_windows = 3;
  /// Every this often one window runs at half the limit to re-measure the floor
  /// (Envoy: its periodic minRTT window, at a fixed low concurrency). 0 = never.
  int64_t probe_interval_ms = 30000;
  /// After a latency cut, a next window whose median is still at least this
  /// share of the cut's makes that median the floor. In [0, 1]; 0 = never
  /// (the floor then moves only by probes and at min_limit).
  double unmoved_share = 0.75;
  /// Double per good window until the first cut (false: grow by sqrt from the start).
  bool slow_start = true;
};

/// One limit's state, for stats and metrics.
struct limit_snapshot {
  int64_t limit = 0;
  int64_t in_flight = 0;
  int64_t min_rtt_us = 0;         ///< the floor; 0 before the first window
  int64_t recent_latency_us = 0;  ///< the last window's median; 0 before the first window
  int64_t paused_until_ms = 0;    ///< Retry-After: no new calls before this; 0 = never paused
  int64_t overload_cuts = 0;      ///< cuts for 429/503/timeout episodes
  int64_t latency_cuts = 0;       ///< cuts for rising latency
  int64_t floor_probes = 0;       ///< times the floor was re-measured (probe or at min_limit)
  bool slow_start = false;        ///< still doubling: no cut yet
  bool probing = false;           ///< a probe window runs: calls held to half the limit
};

/// The limit of one (downstream, function) pair. Every try_acquire() that
/// returns true is matched by exactly one on_done() (an extra one is ignored).
class adaptive_limit {
 public:
  explicit adaptive_limit(adaptive_limit_options opts = {});

  /// True, and one more call counted in flight, when in_flight() < limit() (half
  /// of it in a probe window) and no Retry-After pause runs at `now_ms`; false
  /// (nothing counted) otherwise.
  bool try_acquire(int64_t now_ms);

  /// A call ended at `now_ms` after `latency_us` (it started at now − latency).
  /// Frees its slot and adapts the limit (see the file's comment).
  void on_done(int64_t now_ms, int64_t latency_us, call_outcome outcome);

  /// Retry-After: no new calls before `until_ms`. Never shortens a pause.
  void pause_until(int64_t until_ms);

  /// The learnt limit, in [min_limit, max_limit]. During a probe window
  /// try_acquire() lets only half of it (at least min_limit) be in flight.
  int64_t limit() const;
  int64_t in_flight() const { return in_flight_; }
  int64_t min_rtt_us() const { return floor_us_; }
  /// Whether a Retry-After pause runs at `now_ms`.
  bool paused(int64_t now_ms) const { return now_ms < paused_until_ms_; }
  limit_snapshot snapshot() const;
  const adaptive_limit_options& options() const { return opts_; }

 private:
  int64_t allowed() const;
  void open_window(int64_t now_ms);
  void add_sample(int64_t start_ms, int64_t latency_us);
  int64_t window_ms() const;
  int64_t window_median();
  void close_window(int64_t now_ms);
  void judge_window(int64_t median, int64_t now_ms);
  void grow();
  void cut_to(double new_limit, int64_t now_ms);

  adaptive_limit_options opts_;
  double limit_;                 ///< fractional, as growth and cuts are; limit() floors it
  int64_t in_flight_ = 0;
  int64_t paused_until_ms_ = 0;
  int64_t floor_us_ = 0;         ///< lowest window median; 0 = none yet
  int64_t recent_us_ = 0;
  int64_t cut_at_ms_;            ///< calls started at or before the last cut belong to its episode
  double cut_from_ = 0;          ///< the limit before the last cut; 0 once grown past it
  int64_t windows_at_min_ = 0;   ///< windows in a row that wanted a cut below min_limit
  int64_t probed_at_ms_ = 0;     ///< when the floor was last re-measured
  bool slow_start_;              ///< doubling per good window: no cut yet
  int64_t cut_median_us_ = 0;    ///< the median that caused the last latency cut, until the next window

  bool window_open_ = false;
  bool window_probes_ = false;   ///< this window runs at half the limit to measure the floor
  int64_t window_start_ms_ = 0;
  int64_t window_peak_ = 0;      ///< the most calls in flight during the window
  int64_t window_seen_ = 0;      ///< successful calls that started in the window
  int64_t window_stride_ = 1;    ///< keep every stride-th sample (bounded memory)
  std::vector<int64_t> window_samples_;

  limit_snapshot counters_;
};

/// Per downstream: the options of each function's limit and the cap on the
/// downstream's calls in flight across all its functions.
struct downstream_limit_options {
  adaptive_limit_options per_function;  ///< each (downstream, function) pair's limit
  int64_t max_in_flight = 1000;         ///< all functions of the downstream together (at least 1)
};

/// One (downstream, function) pair's row in downstream_limiter::snapshot().
struct function_limit_snapshot {
  std::string downstream;
  std::string function;
  limit_snapshot limit;
  int64_t downstream_in_flight = 0;      ///< all functions of this downstream
  int64_t downstream_max_in_flight = 0;  ///< its cap
};

/// The adaptive limits of one node process: an adaptive_limit per
/// (downstream, function), made on first use, and a fixed cap per downstream
/// across its functions. Downstreams share nothing: one slow downstream or one
/// slow function changes no other pair's limit (only the downstream's cap is
/// shared by its functions). Not thread-safe: one owner.
class downstream_limiter {
 public:
  /// `defaults` for every downstream without options of its own.
  explicit downstream_limiter(downstream_limit_options defaults = {});

  /// Options for one downstream ("django", "firebase", ...): its cap at once, the
  /// per-function options for pairs made afterwards (call it before the first call).
  void set_options(std::string_view downstream, downstream_limit_options opts);

  /// True, and the call counted in flight for the pair and the downstream, when
  /// the pair's limit, the downstream's cap and any Retry-After pause allow a
  /// call at `now_ms`; false (nothing counted) otherwise.
  bool try_acquire(std::string_view downstream, std::string_view function, int64_t now_ms);

  /// The end of a call try_acquire() let through (adaptive_limit::on_done).
  /// A pair never acquired is ignored.
  void on_done(std::string_view downstream, std::string_view function, int64_t now_ms,
               int64_t latency_us, call_outcome outcome);

  /// Retry-After from `downstream`: no call of any of its functions before `until_ms`.
  void pause(std::string_view downstream, int64_t until_ms);

  /// The calls in flight to `downstream` across its functions.
  int64_t in_flight(std::string_view downstream) const;
  /// Until when `downstream` is paused by a Retry-After (0 = never paused).
  int64_t paused_until(std::string_view downstream) const;
  /// The pair's limit, or nullptr before its first try_acquire().
  const adaptive_limit* find(std::string_view downstream, std::string_view function) const;

  /// Every pair, sorted by downstream then function.
  std::vector<function_limit_snapshot> snapshot() const;

 private:
  struct downstream_state {
    downstream_limit_options opts;
    int64_t in_flight = 0;
    int64_t paused_until_ms = 0;
    std::map<std::string, adaptive_limit, std::less<>> functions;
  };
  downstream_state& state_of(std::string_view downstream);

  downstream_limit_options defaults_;
  std::map<std::string, downstream_state, std::less<>> downstreams_;
};

}  // namespace klynaa::actors
