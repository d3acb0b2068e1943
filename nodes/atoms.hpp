// The message tags of the node's actors (CAF 0.17 atoms: at most 10 characters).
// Messages between the node's actors carry cluster-protocol frames as
// std::string (protocol/cluster.hpp), so no custom type needs registering.
// The typed handles of the actors (handles.hpp) check these shapes at compile time.
//
//   I/O thread -> gateway : (frame_atom, frame)                 a frame from the broker
//   gateway    -> pool    : (run_atom, lease, job_id, frame)    run this JOB
//   pool       -> worker  : (run_atom, lease, frame)
//   anyone     -> worker  : (resume_atom)                        fibers: the job's wait is over
//   worker     -> pool    : (done_atom, lease, frame, dying, code)  the DONE of that job
//   pool       -> gateway : (done_atom, lease, frame, code)     code: its outcome (wire.hpp)
//   gateway    -> pool    : (drain_atom)                        stop: hand queued jobs back
//   pool       -> gateway : (handback_atom, lease, job_id)      one queued job not run
//   runtime    -> gateway : (stop_atom, grace_ms) -> ok_atom    after BYE went out
//   gateway    -> itself  : (tick_atom)                         timers
//   gateway    -> itself  : (flush_atom)                        send the DONEs queued so far as one BATCH
//   pool       -> itself  : (tick_atom)                         restarts, job time limits
//   pool       -> gateway : (withdraw_atom, kind, reason, {"leases","jobs"} JSON)
//                                                               the pool gave up on its kind
#pragma once

#include <caf/atom.hpp>

namespace klynaa::nodes {

using frame_atom = caf::atom_constant<caf::atom("frame")>;
using run_atom = caf::atom_constant<caf::atom("run")>;
using done_atom = caf::atom_constant<caf::atom("done")>;
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using handback_atom = caf::atom_constant<caf::atom("handback")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using flush_atom = caf::atom_constant<caf::atom("flush")>;
using withdraw_atom = caf::atom_constant<caf::atom("withdraw")>;
using resume_atom = caf::atom_constant<caf::atom("resume")>;

}  // namespace klynaa::nodes
