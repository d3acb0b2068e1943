// Job derivation (docs/events-and-functions.md, "Events"): which jobs an
// accepted request creates, their deterministic ids, data, ordering keys and due
// times. Pure functions of the request, so a duplicate derives the same jobs;
// the broker stores them in the same transaction that accepts the request. No
// I/O, thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/message.hpp"

namespace klynaa::protocol {

/// One job to create.
struct job_spec {
  std::string id;            ///< `{request id}#{n}`, n from 1 in the docs' order
  std::string function;      ///< a function of docs/events-and-functions.md, "Functions"
  nlohmann::json data;       ///< the function's data (already valid for it)
  std::string ordering_key;  ///< ordering_key_of(data): "pickup:7", "worker:3" or ""
  int64_t due_ms = 0;        ///< 0 = now; else ms since the epoch when it becomes runnable
  bool auto_release = false; ///< the pickup.delivered auto-release: the broker drops it
                             ///< (never schedules or runs it) once its pickup is closed
};

struct derivation {
  std::vector<job_spec> jobs;
  /// Set by pickup.confirmed and pickup.disputed to their pickup_id: the broker
  /// cancels that pickup's pending auto-release (a job_spec with auto_release) and
  /// schedules none for it later (a pickup.delivered accepted afterwards).
  std::optional<int64_t> closes_pickup;
};

/// The jobs of an accepted request `r` (docs/events-and-functions.md, "Events", "jobs it creates"):
/// - invoke, or publish of a function name: one job `{id}#1` of that function with
///   the request's data;
/// - publish of an event: the event's jobs, numbered `{id}#1`, `{id}#2`, ...;
///   pickup.delivered's auto-release is due at `r.ts_ms + escrow_hold_ms`;
/// - ping, or an unknown type (cannot happen after decode_request): no jobs.
/// `r` must have passed decode_request (fields valid); never throws otherwise.
derivation derive_jobs(const request& r, int64_t escrow_hold_ms);

/// "pickup:{pickup_id}" when data has an integer pickup_id, else
/// "worker:{worker_id}" when it has an integer worker_id, else "".
std::string ordering_key_of(const nlohmann::json& data);

// Job ids (docs/events-and-functions.md, "Job ids and ordering"): every job
// id — of a request's jobs here, of the jobs a job creates in actors/ — is
// built by these, never by hand.

/// "{parent}#{n}": the n-th job (from 1) created by job or request `parent`.
std::string child_job_id(std::string_view parent, int64_t n);

/// "#{name}-{key}": the one job of its kind per key (a pickup, a day), e.g.
/// once_job_id("daily-report", "2024-01-31") == "#daily-report-2024-01-31".
/// Client ids cannot hold '#', so it never collides with a request's jobs.
std::string once_job_id(std::string_view name, std::string_view key);

/// once_job_id with the pickup's id as key, e.g.
/// pickup_job_id("escrow-released", 7) == "#escrow-released-7".
std::string pickup_job_id(std::string_view name, int64_t pickup_id);

}  // namespace klynaa::protocol

namespace klynaa::protocol {

/// Whether a function runs on every node hosting its actor kind rather than on
/// one (its function_spec::fanout in schema.cpp: updateWorkerLocation, applied
/// by every geo actor; docs/cluster-protocol.md, "Fan-out jobs"). Its job counts
/// once, when all of them have applied it.
bool is_fanout(std::string_view function);

}  // namespace klynaa::protocol
