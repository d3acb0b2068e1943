// Adaptive in-flight limits (actors/limiter.hpp; docs/reliability.md,
// "Adaptive in-flight limits"): the gradient on a latency floor, the cut per
// overload episode, and the per-downstream cap.
#include "actors/limiter.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace klynaa::actors {

namespace {

/// A window keeps at most this many latencies: beyond, every other one is
/// dropped and only every second later one kept (a uniform thinning), so a
/// window of a busy pair costs 2 KB whatever its traffic.
constexpr size_t max_window_samples = 256;

adaptive_limit_options checked(adaptive_limit_options o) {
  o.min_limit = std::max<int64_t>(1, o.min_limit);
  o.max_limit = std::max(o.min_limit, o.max_limit);
  o.initial_limit = std::clamp(o.initial_limit, o.min_limit, o.max_limit);
  if (!(o.tolerance >= 1.0)) o.tolerance = 1.0;  // also NaN
  if (!(o.backoff_ratio >= 0.5 && o.backoff_ratio < 1.0)) o.backoff_ratio = 0.9;
  if (!(o.grow_utilization > 0.0 && o.grow_utilization <= 1.0)) o.grow_utilization = 0.75;
  o.window_min_samples = std::max<int64_t>(1, o.window_min_samples);
  o.min_window_ms = std::max<int64_t>(1, o.min_window_ms);
  o.floor_reset_windows = std::max<int64_t>(1, o.floor_reset_windows);
  if (!(o.unmoved_share >= 0.0 && o.unmoved_share <= 1.0)) o.unmoved_share = 0.75;
  o.probe_interval_ms = std::max<int64_t>(0, o.probe_interval_ms);
  return o;
}

}  // namespace

adaptive_limit::adaptive_limit(adaptive_limit_options opts)
    : opts_(checked(opts)),
      limit_(static_cast<double>(opts_.initial_limit)),
      cut_at_ms_(std::numeric_limits<int64_t>::min()),
      slow_start_(opts_.slow_start) {
  window_samples_.reserve(max_window_samples);
}

int64_t adaptive_limit::limit() const {
  return std::clamp(static_cast<int64_t>(limit_), opts_.min_limit, opts_.max_limit);
}

int64_t adaptive_limit::allowed() const {
  return window_probes_ ? std::max(opts_.min_limit, limit() / 2) : limit();
}

bool adaptive_limit::try_acquire(int64_t now_ms) {
  if (!window_open_) {
    probed_at_ms_ = now_ms;  // the first windows measure the floor at initial_limit
    open_window(now_ms);
  }
  if (paused(now_ms) || in_flight_ >= allowed()) return false;
  ++in_flight_;
  window_peak_ = std::max(window_peak_, in_flight_);
  return true;
}

void adaptive_limit::pause_until(int64_t until_ms) {
  paused_until_ms_ = std::max(paused_until_ms_, until_ms);
}

void adaptive_limit::on_done(int64_t now_ms, int64_t latency_us, call_outcome outcome) {
  if (in_flight_ == 0) return;  // no matching try_acquire: the caller's bug, ignored
  --in_flight_;
  latency_us = std::max<int64_t>(0, latency_us);
  // Rounded up, so a call is never taken for younger than it is: one sent in
  // the millisecond of a cut belongs to the cut's episode (and one sent in the
  // first millisecond or two of a window may be left out of it).
  const int64_t start_ms = now_ms - (latency_us + 999) / 1000;
  switch (outcome) {
    case call_outcome::ok:
      add_sample(start_ms, latency_us);
      if (window_seen_ >= opts_.window_min_samples && now_ms - window_start_ms_ >= window_ms())
        close_window(now_ms);
      return;
    case call_outcome::overloaded:
    case call_outcome::timeout:
      // One cut per episode: the calls that were already in flight at the cut
      // were sent at the old limit, and their failures say nothing new.
      if (start_ms > cut_at_ms_) {
        ++counters_.overload_cuts;
        // Out of slow start, back to the last limit a window showed it takes.
        cut_to(slow_start_ ? limit_ / 2 : limit_ * opts_.backoff_ratio, now_ms);
      }
      return;
    case call_outcome::failed:
    case call_outcome::cancelled:
      return;  // says nothing about load
  }
}

void adaptive_limit::open_window(int64_t now_ms) {
  window_open_ = true;
  window_probes_ = opts_.probe_interval_ms > 0 && now_ms - probed_at_ms_ >= opts_.probe_interval_ms;
  window_start_ms_ = now_ms;
  window_peak_ = in_flight_;
  window_seen_ = 0;
  window_stride_ = 1;
  window_samples_.clear();
}

void adaptive_limit::add_sample(int64_t start_ms, int64_t latency_us) {
  // Only calls sent during the window measure the limit the window judges.
  if (!window_open_ || start_ms < window_start_ms_) return;
  if (window_seen_++ % window_stride_ != 0) return;
  if (window_samples_.size() == max_window_samples) {
    size_t kept = 0;
    for (size_t i = 0; i < window_samples_.size(); i += 2) window_samples_[kept++] = window_samples_[i];
    window_samples_.resize(kept);
    window_stride_ *= 2;
    if ((window_seen_ - 1) % window_stride_ != 0) return;
  }
  window_samples_.push_back(latency_us);
}

int64_t adaptive_limit::window_ms() const {
  // Two floors: a change of the limit shows in the latencies of the calls
  // sent after it, which need about one floor to come back.
  return std::max(opts_.min_window_ms, 2 * floor_us_ / 1000);
}

int64_t adaptive_limit::window_median() {
  auto mid = window_samples_.begin() + static_cast<std::ptrdiff_t>(window_samples_.size() / 2);
  std::nth_element(window_samples_.begin(), mid, window_samples_.end());
  return *mid;
}

void adaptive_limit::close_window(int64_t now_ms) {
  const int64_t median = window_median();
  recent_us_ = median;
  if (window_probes_) {
    // Sent at half the limit: a floor learnt under load loses its queueing
    // here, and one learnt before the downstream got slower is replaced.
    floor_us_ = median;
    probed_at_ms_ = now_ms;
    ++counters_.floor_probes;
  } else {
    judge_window(median, now_ms);
  }
  open_window(now_ms);
}

void adaptive_limit::judge_window(int64_t median, int64_t now_ms) {
  const int64_t cut_median = std::exchange(cut_median_us_, 0);
  if (cut_median > 0 && static_cast<double>(median) >= opts_.unmoved_share * static_cast<double>(cut_median)) {
    // The last window cut the limit for latency, and at the lower limit the
    // latency stayed: the downstream got slower by itself. Cutting on would
    // take the limit to its minimum for nothing; this is its floor now, and
    // the cut is undone.
    floor_us_ = median;
    limit_ = std::max(limit_, cut_from_);
    windows_at_min_ = 0;
    probed_at_ms_ = now_ms;
    ++counters_.floor_probes;
    return;
  }
  if (floor_us_ == 0 || median < floor_us_) floor_us_ = median;
  const double near_floor = opts_.tolerance * static_cast<double>(floor_us_);
  if (static_cast<double>(median) <= near_floor) {
    windows_at_min_ = 0;
    if (static_cast<double>(window_peak_) >= opts_.grow_utilization * limit_) grow();
  } else if (limit_ > static_cast<double>(opts_.min_limit)) {
    // Latency rose: cut in proportion (Envoy's and Gradient2's gradient),
    // at most by half per window so one odd window cannot collapse it.
    windows_at_min_ = 0;
    ++counters_.latency_cuts;
    const double factor = near_floor / static_cast<double>(median);
    cut_to(limit_ * std::max(0.5, factor), now_ms);
    if (factor <= 0.5 && opts_.unmoved_share > 0) {
      // Halved: if the latency is ours, it halves too. The next window judges
      // that (judge_window's start), sampling only calls sent once the queue
      // the old limit built has drained, about one of its medians from now.
      cut_median_us_ = median;
      window_start_ms_ = now_ms + median / 1000;
    }
  } else if (++windows_at_min_ >= opts_.floor_reset_windows) {
    // Slow even at min_limit, window after window: the downstream got slower
    // for good, not because of us. Its latency at min_limit is the new floor.
    floor_us_ = median;
    windows_at_min_ = 0;
    probed_at_ms_ = now_ms;
    ++counters_.floor_probes;
  }
}

void adaptive_limit::grow() {
  // Just below where the last cut happened, probe by one (the downstream broke
  // there); elsewhere by sqrt(limit), Envoy's burst headroom: from 10 to 1000
  // in about 60 windows.
  if (slow_start_) {
    limit_ = std::min(static_cast<double>(opts_.max_limit), 2 * limit_);
    return;
  }
  if (cut_from_ > 0 && limit_ >= cut_from_) cut_from_ = 0;
  const bool near_last_cut = cut_from_ > 0 && limit_ >= cut_from_ * opts_.backoff_ratio;
  const double step = near_last_cut ? 1.0 : std::max(1.0, std::sqrt(limit_));
  limit_ = std::min(static_cast<double>(opts_.max_limit), limit_ + step);
}

void adaptive_limit::cut_to(double new_limit, int64_t now_ms) {
  slow_start_ = false;
  cut_from_ = limit_;
  limit_ = std::clamp(new_limit, static_cast<double>(opts_.min_limit), static_cast<double>(opts_.max_limit));
  cut_at_ms_ = now_ms;
  open_window(now_ms);  // the latencies so far were measured at the old limit
}

limit_snapshot adaptive_limit::snapshot() const {
  limit_snapshot s = counters_;
  s.limit = limit();
  s.in_flight = in_flight_;
  s.min_rtt_us = floor_us_;
  s.recent_latency_us = recent_us_;
  s.paused_until_ms = paused_until_ms_;
  s.probing = window_probes_;
  s.slow_start = slow_start_;
  return s;
}

// --- downstream_limiter ---------------------------------------------------

downstream_limiter::downstream_limiter(downstream_limit_options defaults) : defaults_(defaults) {
  defaults_.max_in_flight = std::max<int64_t>(1, defaults_.max_in_flight);
}

downstream_limiter::downstream_state& downstream_limiter::state_of(std::string_view downstream) {
  auto it = downstreams_.find(downstream);
  if (it == downstreams_.end()) {
    it = downstreams_.emplace(std::string(downstream), downstream_state{}).first;
    it->second.opts = defaults_;
  }
  return it->second;
}

void downstream_limiter::set_options(std::string_view downstream, downstream_limit_options opts) {
  opts.max_in_flight = std::max<int64_t>(1, opts.max_in_flight);
  state_of(downstream).opts = opts;
}

bool downstream_limiter::try_acquire(std::string_view downstream, std::string_view function, int64_t now_ms) {
  downstream_state& d = state_of(downstream);
  if (now_ms < d.paused_until_ms || d.in_flight >= d.opts.max_in_flight) return false;
  auto it = d.functions.find(function);
  if (it == d.functions.end())
    it = d.functions.emplace(std::string(function), adaptive_limit(d.opts.per_function)).first;
  if (!it->second.try_acquire(now_ms)) return false;
  ++d.in_flight;
  return true;
}

void downstream_limiter::on_done(std::string_view downstream, std::string_view function, int64_t now_ms,
                                 int64_t latency_us, call_outcome outcome) {
  auto d = downstreams_.find(downstream);
  if (d == downstreams_.end()) return;
  auto f = d->second.functions.find(function);
  if (f == d->second.functions.end() || f->second.in_flight() == 0) return;
  f->second.on_done(now_ms, latency_us, outcome);
  --d->second.in_flight;
}

void downstream_limiter::pause(std::string_view downstream, int64_t until_ms) {
  downstream_state& d = state_of(downstream);
  d.paused_until_ms = std::max(d.paused_until_ms, until_ms);
  // Also on each pair, so their snapshots show it; pairs made later are
  // held by the downstream's own pause.
  for (auto& [name, limit] : d.functions) limit.pause_until(until_ms);
}

int64_t downstream_limiter::in_flight(std::string_view downstream) const {
  auto d = downstreams_.find(downstream);
  return d == downstreams_.end() ? 0 : d->second.in_flight;
}

int64_t downstream_limiter::paused_until(std::string_view downstream) const {
  auto d = downstreams_.find(downstream);
  return d == downstreams_.end() ? 0 : d->second.paused_until_ms;
}

const adaptive_limit* downstream_limiter::find(std::string_view downstream, std::string_view function) const {
  auto d = downstreams_.find(downstream);
  if (d == downstreams_.end()) return nullptr;
  auto f = d->second.functions.find(function);
  return f == d->second.functions.end() ? nullptr : &f->second;
}

std::vector<function_limit_snapshot> downstream_limiter::snapshot() const {
  std::vector<function_limit_snapshot> out;
  for (const auto& [downstream, d] : downstreams_) {
    for (const auto& [function, limit] : d.functions) {
      function_limit_snapshot s;
      s.downstream = downstream;
      s.function = function;
      s.limit = limit.snapshot();
      s.downstream_in_flight = d.in_flight;
      s.downstream_max_in_flight = d.opts.max_in_flight;
      out.push_back(std::move(s));
    }
  }
  return out;
}

}  // namespace klynaa::actors
