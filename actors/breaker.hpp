// Circuit breakers, one per downstream service of this process ("django",
// "webhook", "firebase", "google_oauth", "sns"). After `failure_threshold`
// transient failures in a row (no answer, 429 or 5xx) a breaker opens: calls to
// that service are refused at once for `open_ms`, and the job fails with code
// "circuit_open" and a retry_after — the broker then lets it wait without
// counting the attempt (jobs wait instead of burning attempts). When the time is
// up the breaker is half-open: one call goes through as a probe; its success
// closes the breaker, its failure opens it again for twice as long (at most
// `max_open_ms`). An answer that is not a transient failure (2xx, other 4xx)
// counts as success: the service is up, whatever it said. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace klynaa::actors {

struct breaker_options {
  int64_t failure_threshold = 5;  ///< circuit_breaker.failure_threshold
  int64_t open_ms = 5000;         ///< circuit_breaker.open_seconds
  int64_t max_open_ms = 60000;    ///< circuit_breaker.max_open_seconds
};

class circuit_breaker {
 public:
  enum class state { closed, open, half_open };

  /// `clock`: milliseconds of a monotonic clock (tests pass their own).
  circuit_breaker(std::string service, breaker_options opts, std::function<int64_t()> clock = {});

  /// Whether a call may go now. When not, `retry_in_ms` says when to try again.
  /// In half-open state only one caller (the probe) gets true until it records.
  bool allow(int64_t& retry_in_ms);

  /// The outcome of a call allow() let through: `failure` for a transient one.
  void record(bool failure);

  state current() const;
  /// {"state": "closed"|"open"|"half_open", "consecutive_failures", "opens", "retry_in_ms"}
  nlohmann::json snapshot() const;
  const std::string& service() const { return service_; }

 private:
  int64_t now() const;
  void open(int64_t now_ms, int64_t for_ms);

  std::string service_;
  breaker_options opts_;
  std::function<int64_t()> clock_;
  mutable std::mutex mu_;
  state state_ = state::closed;
  int64_t failures_ = 0;      ///< consecutive transient failures
  int64_t opened_at_ = 0;
  int64_t open_for_ = 0;
  int64_t probe_started_ = 0;  ///< half-open: when the probe went out (0 = none)
  int64_t opens_ = 0;          ///< times it opened since start
};

/// Sets the options of every breaker of this process (before the first use;
/// later calls change breakers made afterwards only).
void configure_breakers(const breaker_options& opts);

/// The process-wide breaker of `service`, made on first use.
circuit_breaker& breaker_for(std::string_view service);

/// {service: snapshot} of every breaker made so far (node_stats, /metrics).
nlohmann::json breaker_states();

/// Whether an HTTP answer is a transient failure for a breaker: no answer, 408, 429, 5xx.
bool breaker_failure(int http_status);

}  // namespace klynaa::actors
