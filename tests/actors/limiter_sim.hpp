// A deterministic simulation for the limiter tests (limiter_test.cpp): callers
// that always have work (or a fixed amount of it) send calls through a limit
// to a modelled downstream, one millisecond at a time, on a fake clock.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <queue>
#include <string>
#include <vector>

#include "actors/limiter.hpp"

namespace klynaa::limiter_sim {

using actors::call_outcome;

/// What the modelled downstream answers to a call, and after how long.
struct answer {
  call_outcome outcome = call_outcome::ok;
  int64_t latency_us = 0;
};

/// The downstream: `concurrency` is the lane's calls in flight including this
/// one, when it is sent at `now_ms`.
using model = std::function<answer(int64_t concurrency, int64_t now_ms)>;

/// One caller: how it asks its limit for a slot, reports an end, and what
/// it does with an answer (honour Retry-After, say).
struct lane {
  std::string name;
  std::function<bool(int64_t now_ms)> acquire;
  std::function<void(int64_t now_ms, const answer&)> done;
  model downstream;
  int64_t demand = INT64_MAX;  ///< calls it wants in flight at once (INT64_MAX: always more work)
  std::function<void(int64_t now_ms, const answer&)> on_answer;  ///< optional

  // Counted by the simulation.
  int64_t in_flight = 0;
  int64_t sent = 0;
  int64_t ok = 0;
  int64_t overloaded = 0;
  int64_t timeouts = 0;
  int64_t last_sent_ms = -1;
  void reset_counts() { sent = ok = overloaded = timeouts = 0; }
};

/// Deterministic noise for latencies: a 64-bit LCG, uniform in [lo, hi).
class noise {
 public:
  explicit noise(uint64_t seed) : state_(seed) {}
  double uniform(double lo, double hi) {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * static_cast<double>(state_ >> 11) / static_cast<double>(1ULL << 53);
  }

 private:
  uint64_t state_;
};

class simulation {
 public:
  explicit simulation(std::vector<lane> lanes) : lanes_(std::move(lanes)) {}

  lane& operator[](size_t i) { return lanes_[i]; }
  int64_t now() const { return now_; }

  /// Runs to `end_ms`; `each_ms`, if given, is called after every millisecond.
  void run_until(int64_t end_ms, const std::function<void(int64_t)>& each_ms = {}) {
    for (; now_ < end_ms; ++now_) {
      finish_due();
      for (size_t i = 0; i < lanes_.size(); ++i) send(i);
      if (each_ms) each_ms(now_);
    }
  }

 private:
  struct pending {
    int64_t end_ms;
    uint64_t seq;  // ties end in the order sent: deterministic
    size_t lane;
    answer a;
    bool operator>(const pending& o) const { return end_ms != o.end_ms ? end_ms > o.end_ms : seq > o.seq; }
  };

  void finish_due() {
    while (!queue_.empty() && queue_.top().end_ms <= now_) {
      pending p = queue_.top();
      queue_.pop();
      lane& l = lanes_[p.lane];
      --l.in_flight;
      if (p.a.outcome == call_outcome::ok) ++l.ok;
      if (p.a.outcome == call_outcome::overloaded) ++l.overloaded;
      if (p.a.outcome == call_outcome::timeout) ++l.timeouts;
      l.done(now_, p.a);
      if (l.on_answer) l.on_answer(now_, p.a);
    }
  }

  void send(size_t i) {
    lane& l = lanes_[i];
    while (l.in_flight < l.demand && l.acquire(now_)) {
      ++l.in_flight;
      ++l.sent;
      l.last_sent_ms = now_;
      answer a = l.downstream(l.in_flight, now_);
      const int64_t ms = std::max<int64_t>(1, (a.latency_us + 999) / 1000);
      queue_.push(pending{now_ + ms, seq_++, i, a});
    }
  }

  std::vector<lane> lanes_;
  std::priority_queue<pending, std::vector<pending>, std::greater<>> queue_;
  int64_t now_ = 0;
  uint64_t seq_ = 0;
};

/// A lane through one adaptive_limit.
inline lane through(actors::adaptive_limit& limit, model downstream, int64_t demand = INT64_MAX) {
  lane l;
  l.name = "limit";
  l.acquire = [&limit](int64_t now) { return limit.try_acquire(now); };
  l.done = [&limit](int64_t now, const answer& a) { limit.on_done(now, a.latency_us, a.outcome); };
  l.downstream = std::move(downstream);
  l.demand = demand;
  return l;
}

/// A lane through one (downstream, function) pair of a downstream_limiter.
inline lane through(actors::downstream_limiter& limiter, std::string downstream, std::string function,
                    model m, int64_t demand = INT64_MAX) {
  lane l;
  l.name = downstream + "/" + function;
  l.acquire = [&limiter, downstream, function](int64_t now) { return limiter.try_acquire(downstream, function, now); };
  l.done = [&limiter, downstream, function](int64_t now, const answer& a) {
    limiter.on_done(downstream, function, now, a.latency_us, a.outcome);
  };
  l.downstream = std::move(m);
  l.demand = demand;
  return l;
}

// --- downstream models -----------------------------------------------------

/// Always `latency_ms`, whatever the load.
inline model flat(int64_t latency_ms) {
  return [latency_ms](int64_t, int64_t) { return answer{call_outcome::ok, latency_ms * 1000}; };
}

/// Capacity `c` with a queue: latency = base × max(1, concurrency / c).
inline model queueing(int64_t c, std::function<int64_t(int64_t now_ms)> base_ms) {
  return [c, base_ms](int64_t n, int64_t now) {
    const double factor = std::max(1.0, static_cast<double>(n) / static_cast<double>(c));
    return answer{call_outcome::ok, static_cast<int64_t>(static_cast<double>(base_ms(now)) * 1000 * factor)};
  };
}

/// Capacity `c` and no queue: a call above it is answered 503 after 2 ms.
inline model hard_capacity(int64_t c, int64_t latency_ms) {
  return [c, latency_ms](int64_t n, int64_t) {
    if (n > c) return answer{call_outcome::overloaded, 2000};
    return answer{call_outcome::ok, latency_ms * 1000};
  };
}

}  // namespace klynaa::limiter_sim
