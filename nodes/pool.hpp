// A pool: the jobs of one actor kind. It keeps a FIFO queue and `workers`
// worker actors (nodes/worker.hpp), hands each idle worker the next job, and
// supervises them: it monitors each worker and replaces one that dies,
// reporting the job it had as a transient failure (never lost).
//
// Messages:
//   (run_atom, lease, job_id, job frame)  queue this job (from the gateway);
//       while draining it is handed back at once.
//   (done_atom, lease, done frame)        from a worker: forwarded to the gateway
//       as (done_atom, lease, done frame); the worker takes the next job.
//   (drain_atom)                          stop taking jobs: every queued job goes
//       back to the gateway as (handback_atom, lease, job_id); running jobs finish.
// When the pool exits, it sends an exit to its workers (an idle one ends at
// once, a busy one after its handler returns).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include "nodes/job.hpp"

namespace klynaa::nodes {

struct pool_config {
  std::string node;
  actor_kind_spec spec;
  std::shared_ptr<std::atomic<int>> busy;  ///< see worker_config::busy
};

struct pool_state {
  static inline const char* name = "pool";

  struct slot {
    caf::actor worker;
    bool busy = false;
    int64_t lease = 0;
    std::string frame;  ///< the job it runs, to report it if the worker dies
  };
  struct pending {
    int64_t lease = 0;
    std::string job_id;
    std::string frame;
  };

  pool_config cfg;
  caf::actor gateway;
  std::vector<slot> slots;
  std::deque<pending> queue;
  bool draining = false;

  ~pool_state();
};

caf::behavior pool_actor(caf::stateful_actor<pool_state>* self, caf::actor gateway, pool_config cfg);

}  // namespace klynaa::nodes
