// One connection of klynaa-bench's load mode (bench_load.hpp): a DEALER socket
// on its own thread that sends its share of the requests and matches the
// replies. Ack latency is measured from the request's *scheduled* send time when
// paced (so a slow broker cannot hide behind a client that waits for it: no
// coordinated omission), from the actual send time when flat out.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>

#include <zmq.hpp>

#include "bench/bench_options.hpp"
#include "protocol/histogram.hpp"

namespace klynaa::bench {

using protocol::histogram;

/// What every connection of a run shares: the options, the run's id prefix, the
/// waited function, the ZeroMQ context, and the start line (every thread waits
/// on `cv` until `go`, then sends from `t0` until `deadline`, both mono ns).
struct shared_state {
  const options* o = nullptr;
  std::string prefix;  // run-unique id prefix
  std::string function;
  zmq::context_t* ctx = nullptr;
  std::mutex mu;
  std::condition_variable cv;
  int ready = 0;
  bool go = false;
  int64_t t0 = 0;
  int64_t deadline = 0;
};

/// What one connection measured; a non-empty `error` means the run failed.
struct conn_result {
  histogram ack, e2e;
  uint64_t publishes_acked = 0, invokes_ok = 0, overloaded_retries = 0;
  int64_t last_publish_ack = 0;  // mono ns
  std::string error;             // non-empty: the run failed
};

/// Connection `c` of `S`: connects, answers a ping, reports ready, waits for
/// the start, then runs until its requests are answered or the deadline passes.
void connection(shared_state& S, int c, conn_result& res);

}  // namespace klynaa::bench
