// Conversions between the cluster protocol's messages (protocol/cluster.hpp,
// JSON carried as text) and the job-handler interface (nodes/job.hpp, JSON as
// values). Pure functions, no I/O, thread-safe; none throws except bad_alloc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "nodes/job.hpp"
#include "protocol/cluster.hpp"

namespace klynaa::nodes {

/// The handler's view of a dispatched job, run on node `node`. Returns nullopt
/// and sets `error` when data_json is not a JSON object.
std::optional<job> to_job(const protocol::cluster::job& wire, const std::string& node, std::string* error);

/// The DONE reporting `r`: its outcome set with protocol::cluster::set_outcome,
/// children with their data as JSON text, http_status 0 and retry_after_ms -1
/// when absent.
protocol::cluster::done to_done(const protocol::cluster::job& wire, const job_result& r, int64_t duration_ms);

/// A DONE for a job that never reached a handler (or whose worker died).
protocol::cluster::done failure_done(const protocol::cluster::job& wire, outcome kind, std::string code,
                                     std::string message, int64_t duration_ms = 0);

/// A DONE frame's outcome as it travels next to the frame between the node's
/// actors, so that the gateway need not decode the frame again: the outcome as
/// an integer, or `unknown_outcome` (then the gateway decodes the frame).
inline constexpr int64_t unknown_outcome = -1;
inline int64_t outcome_code(outcome o) { return static_cast<int64_t>(o); }
/// The outcome of a code from outcome_code(); nullopt for any other value.
std::optional<outcome> outcome_of_code(int64_t code);

/// "ok", "retry", "dead": the node's view of an outcome in logs (docs/operations.md,
/// "Watching it"); deferred is "retry". The broker decides whether a transient
/// failure was the last attempt.
const char* log_outcome(outcome o);

}  // namespace klynaa::nodes
