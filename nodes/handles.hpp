// The typed handles of the node's actors (CAF 0.17: typed_actor with
// replies_to<...>::with<...>; reacts_to<...> is replies_to<...>::with<void>).
// Each lists every message its actor takes, so a message of the wrong shape is
// a compile error instead of an unexpected_message at run time. The order of
// the messages between them is in atoms.hpp; what each actor does with them in
// its own header (gateway.hpp, pool.hpp, worker.hpp). A handler that throws
// kills its actor: each catches at its boundary (worker.cpp: the job handler).
#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>
#include <caf/type_id.hpp>  // caf::ok_atom

#include "nodes/atoms.hpp"

namespace klynaa::nodes {

/// A worker (worker.hpp): runs one job at a time.
using worker_actor = caf::typed_actor<
    /// (run_atom, lease, job frame): runs the job and sends (done_atom, lease,
    /// done frame, dying, outcome code) to the sender, its pool; not a reply,
    /// so that a fiber job can finish after the handler returned to CAF.
    caf::reacts_to<run_atom, int64_t, std::string>,
    /// Fibers: the job's wait is over; continue its fiber. Ignored when no job waits.
    caf::reacts_to<resume_atom>>;

/// A pool (pool.hpp): the queue and the workers of one actor kind.
using pool_actor = caf::typed_actor<
    /// (run_atom, lease, job id, job frame) from the gateway: queue the job, or
    /// hand it back at once (handback_atom to the gateway) while draining.
    caf::reacts_to<run_atom, int64_t, std::string, std::string>,
    /// (done_atom, lease, done frame, dying, outcome code) from a worker:
    /// forwarded to the gateway; a late one of an abandoned worker is dropped.
    caf::reacts_to<done_atom, int64_t, std::string, bool, int64_t>,
    /// Stop taking jobs; every queued one goes back to the gateway. Idempotent.
    caf::reacts_to<drain_atom>,
    /// Its own timer: restarts due, job time limits.
    caf::reacts_to<tick_atom>>;

/// The gateway (gateway.hpp): the node's side of the cluster protocol.
using gateway_actor = caf::typed_actor<
    /// (frame_atom, frame): a frame from the broker (the I/O thread).
    caf::reacts_to<frame_atom, std::string>,
    /// (done_atom, lease, done frame, outcome code): a DONE from a pool.
    caf::reacts_to<done_atom, int64_t, std::string, int64_t>,
    /// (handback_atom, lease, job id): a queued job a draining pool did not run.
    caf::reacts_to<handback_atom, int64_t, std::string>,
    /// (withdraw_atom, kind, reason, {"leases","jobs"} JSON): a pool gave up on its kind.
    caf::reacts_to<withdraw_atom, std::string, std::string, std::string>,
    /// (stop_atom, grace_ms): replies ok_atom once BYE is in the PUSH socket.
    /// Idempotent: a second stop gets ok_atom at once.
    caf::replies_to<stop_atom, int64_t>::with<caf::ok_atom>,
    /// Its own timer.
    caf::reacts_to<tick_atom>,
    /// Its own: send the DONEs queued so far as one BATCH.
    caf::reacts_to<flush_atom>>;

}  // namespace klynaa::nodes
