// Admission: whether the broker takes a decoded client request now, and if so
// what it writes. The checks are those of docs/ingress-protocol.md ("Checks, in
// order", the `overloaded` and `shutting_down` rows) and of docs/reliability.md
// ("What each fault does": max_pending, a failing store, a nearly full disk);
// the jobs a request implies are protocol::derive_jobs'
// (docs/events-and-functions.md, "Job ids and ordering").
//
// Pure: no socket, no store, no clock. The loop (core.cpp) passes the broker's
// state and `now`, sends the reply or puts the write request in the open batch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "broker/store.hpp"
#include "protocol/config.hpp"
#include "protocol/message.hpp"

namespace klynaa::broker {

/// What admission needs to know of the broker, read by the loop for each request.
struct admission_state {
  bool draining = false;          ///< SIGTERM received: nothing new is taken
  size_t pending = 0;             ///< unfinished jobs in the live queue
  int64_t commit_failures = 0;    ///< store commits failed in a row (0 = the store works)
  std::string last_commit_error;  ///< the store's sentence for the last failure
  int64_t disk_free_mb = -1;      ///< free space on the data dir's disk; -1 = not measured yet
};

/// The answer to one request: exactly one of a reply now (`reply` set: a pong or
/// a rejection, nothing is stored) or a write request (`reply` unset: `write`
/// holds the request and its jobs, answered once their batch is committed).
struct admission {
  std::optional<protocol::reply> reply;
  new_request write;
};

/// Admits `req` (already decoded and validated, docs/ingress-protocol.md): ping
/// is answered pong; then the first failing check of draining, max_pending, a
/// failing store and free disk space is the rejection; otherwise the jobs the
/// request implies become `write`, each with a fresh seq from `next_seq`
/// (called once per job, in order), state ready and created at `now`.
admission admit(const protocol::request& req, const admission_state& state, const protocol::config& cfg,
                int64_t now, const std::function<int64_t()>& next_seq);

/// The `overloaded` rejection of a request the store could not take: answered to
/// every request of a batch whose commit failed, and to every new request until a
/// probe commit succeeds (docs/reliability.md, "What each fault does").
protocol::reply store_failure_rejection(const std::optional<std::string>& id, const std::string& store_error);

/// The `malformed` rejection of a message that is not [identity, [""], payload]
/// (docs/ingress-protocol.md, "Topology and frames"); `frames` counts the frames
/// after the identity.
protocol::reply frame_layout_rejection(size_t frames);

}  // namespace klynaa::broker
