// Completion: what becomes of a running job when its node reports DONE, or when
// its lease is lost. The rules are docs/reliability.md's ("What each fault
// does", "Circuit breakers") and docs/events-and-functions.md's ("Failures and
// retries"): ok ends the job and creates its children; a transient failure
// retries with backoff until retry.max_attempts, then the job is dead; a
// permanent failure is dead at once; a `circuit_open` refusal waits for the
// breaker without using an attempt; a lost lease runs the job again at once
// (the attempt counts).
//
// Pure: a function of the job, the DONE, the retry policy and `now` (plus the
// random generator of the backoff's jitter). The loop (outcomes.cpp) applies the
// decision to the live queue, the open batch and the stats.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "broker/queue.hpp"
#include "broker/store.hpp"
#include "protocol/cluster.hpp"
#include "protocol/config.hpp"
#include "protocol/message.hpp"

namespace klynaa::broker {

/// A job that ended, to be told to invoke waiters once its end is committed.
struct finished_note {
  std::string job_id;
  protocol::reply_status status = protocol::reply_status::ok;
  std::string result_json;
  std::optional<protocol::error_info> error;
};

/// What to do with a job after its attempt.
struct completion {
  enum class verdict {
    done,          ///< succeeded: finished as done
    retry,         ///< failed, transient: retry_wait until due_ms
    circuit_wait,  ///< refused by an open breaker: retry_wait until due_ms, attempt given back
    run_again,     ///< lease lost: ready again now, keeping its place in its key's order
    dead,          ///< permanent, or out of attempts: finished as dead (dead-letter queue)
  };
  verdict what = verdict::done;
  job_state state = job_state::done;  ///< the state to record: done, retry_wait, ready or dead
  /// The attempt's history entry ("ok", "retry", "dead", "lost"); empty: none
  /// (a circuit_open refusal ran nothing).
  std::string history;
  /// What the stats count it as: "ok", "retry" or "dead".
  std::string counted;
  std::string error_json;  ///< {"kind","code","message","http_status"?}, for failures
  std::string result_json; ///< done: the job's result
  int64_t due_ms = 0;      ///< retry, circuit_wait: when it may run again
  bool give_back_attempt = false;  ///< circuit_wait: the refused attempt does not count
  bool observe_duration = false;   ///< the attempt ran: its duration goes to the histogram
  /// For recent_failures: the failure's code and message (retry, run_again, dead).
  std::string failure_code;
  std::string failure_message;
  /// done and dead: the end to tell invoke waiters once committed.
  std::optional<finished_note> note;
  /// done: the jobs it created (seq 0: the caller numbers them, in this order).
  std::vector<job_record> children;
};

/// The decision for a running job `j` whose DONE `d` arrived under its current
/// lease, with `policy` = retry_for(j.function). The backoff of a retry is
/// backoff_delay()'s (backoff.hpp), drawn from `rng`.
completion complete_job(const live_job& j, const protocol::cluster::done& d, const protocol::retry_policy& policy,
                        int64_t now, std::mt19937_64& rng);

/// The decision for a running job `j` whose lease is lost for reason `why` (its
/// node left, withdrew the job's kind, went silent, or the lease expired): dead
/// when its attempts are spent, else run_again.
completion lose_job(const live_job& j, const std::string& why, const protocol::retry_policy& policy);

/// The JSON text of a failure as stored in last_error_json: {"kind", "code",
/// "message"} and "http_status" when > 0. `kind`: transient, permanent or exhausted.
std::string failure_json(const std::string& kind, const std::string& code, const std::string& message,
                         int64_t http_status);

}  // namespace klynaa::broker
