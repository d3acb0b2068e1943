// The job-handler interface between the node runtime (nodes/) and the job logic
// (actors/). Plain C++, no CAF: a handler runs one job to its end and says how it
// went; the runtime decides retries, leases and reporting.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/cluster.hpp"

namespace klynaa::nodes {

/// One attempt of one job, as the broker dispatched it.
struct job {
  std::string id;        ///< e.g. "evt-1#1", "#escrow-released-7"
  std::string function;  ///< e.g. "processEscrowRelease"
  nlohmann::json data;   ///< the function's data (docs/events-and-functions.md)
  int attempt = 1;       ///< from 1
  int64_t ts_ms = 0;     ///< when the originating event happened (ms since epoch)
  std::string node;      ///< name of the node running it (for logs)
};

/// A job created by a job (docs/events-and-functions.md, "Job ids and ordering":
/// `{parent}#{n}` or `#{name}-{pickup_id}`, built by protocol/jobs.hpp).
/// The broker stores it in the same transaction that records the parent's success
/// and drops it silently when a job with that id already exists.
struct child_job {
  std::string id;
  std::string function;
  nlohmann::json data;
  int64_t due_ms = 0;  ///< 0 = now
};

/// How one attempt ended: the cluster protocol's outcome (protocol/cluster.hpp,
/// docs/cluster-protocol.md "Outcomes"), so the handler's word travels to the
/// broker unchanged. transient: retry with backoff (connection error, timeout,
/// 408, 429, 5xx); permanent: no retry can help (other 4xx, invalid data);
/// deferred: not attempted, the downstream's circuit breaker is open (make it
/// with job_result::deferred).
using outcome = protocol::cluster::outcome;

struct job_result {
  outcome kind = outcome::ok;
  nlohmann::json result = nlohmann::json::object();  ///< for ok
  std::string error_code;   ///< short stable code, e.g. "http_404", "connect"
  std::string message;      ///< a sentence a person can act on
  std::optional<int> http_status;          ///< when Django (or a provider) answered
  std::optional<int64_t> retry_after_ms;   ///< Retry-After on 429/503
  std::vector<child_job> children;         ///< jobs to create on success

  static job_result success(nlohmann::json r) {
    job_result j;
    j.result = std::move(r);
    return j;
  }
  static job_result failure(outcome k, std::string code, std::string msg,
                            std::optional<int> status = std::nullopt) {
    job_result j;
    j.kind = k;
    j.error_code = std::move(code);
    j.message = std::move(msg);
    j.http_status = status;
    return j;
  }
  /// Not attempted: the downstream's circuit breaker is open and lets a probe
  /// through in `retry_after_ms`. The broker waits that long (at least 100 ms)
  /// without spending an attempt. Its error_code is circuit_open_code.
  static job_result deferred(int64_t retry_after_ms, std::string msg) {
    job_result j = failure(outcome::deferred, protocol::cluster::circuit_open_code, std::move(msg));
    j.retry_after_ms = retry_after_ms;
    return j;
  }
};

/// Runs jobs of one actor kind. One instance is used by one worker, one job at a
/// time (the runtime makes one per worker), so it may own curl handles; state
/// shared across workers (the geo index) is the implementation's to
/// synchronise. On a kind with fibers the worker may resume it on another
/// thread after each HTTP call (nodes/suspend.hpp).
/// `run` may block (HTTP calls) and must not throw; the runtime still catches and
/// counts an escaped exception as a transient failure.
class job_handler {
 public:
  virtual ~job_handler() = default;
  virtual job_result run(const job& j) = 0;
};

/// How a kind's pool supervises its workers (nodes/pool.hpp), OTP style: a
/// worker that dies (its handler threw, or it was abandoned past the job time
/// limit) is restarted after a backoff; more than `max_restarts` restarts within
/// `restart_window_ms` escalate: the node withdraws the kind from the broker.
struct supervision {
  int64_t job_timeout_ms = 300000;        ///< node.job_timeout_seconds; 0 = no limit
  int64_t max_restarts = 10;              ///< node.max_restarts
  int64_t restart_window_ms = 60000;      ///< node.restart_window_seconds
  int64_t restart_backoff_ms = 100;       ///< first restart delay; doubles per recent restart
  int64_t restart_backoff_max_ms = 5000;  ///< its ceiling
};

/// One actor kind a node can host: its name ("notifier", "escrow", "geo",
/// "scheduler"), the functions it runs, how many workers run in parallel, and a
/// factory that makes one handler per worker. Each kind has its own pool and
/// limits (a bulkhead): a stuck escrow call never delays geo or notifications.
struct actor_kind_spec {
  std::string kind;
  std::vector<std::string> functions;
  int workers = 1;
  std::function<std::unique_ptr<job_handler>()> make_handler;
  supervision limits;
  /// Jobs the node asks for beyond `workers`: they wait in the pool's queue.
  /// Only for kinds whose jobs are short (geo): a queued job's lease runs.
  int prefetch = 0;
  /// Whether a handler may block (an HTTP call to Django or a provider): then
  /// each worker has a thread of its own. A kind whose handlers return within
  /// microseconds and call nothing outside the process (geo) says false: its
  /// workers run on the CAF scheduler's threads and a job costs no thread
  /// wake-up. Such a handler must not block: a stuck one would hold a scheduler
  /// thread, and with it the gateway (docs/reliability.md).
  bool blocking = true;
  /// Whether each job runs on a fiber of its own (nodes/suspend.hpp): the
  /// handler's HTTP calls then suspend the fiber instead of blocking a thread,
  /// so `workers` is the number of jobs in flight, not of threads, and the
  /// workers share CAF's scheduler threads. Implies blocking = false. For
  /// handlers whose waits are all HTTP calls through actors/http.hpp with an
  /// event loop; any other blocking call would hold a scheduler thread.
  bool fibers = false;
};

}  // namespace klynaa::nodes
