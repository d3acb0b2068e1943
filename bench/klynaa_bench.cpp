// klynaa-bench: the load generator of issue 8 (see docs/performance.md).
//
//   klynaa-bench [--start | --ingress E --admin A | --data-dir D] [--connections N]
//                [--window W] [--count C] [--rate R] [--type T] [--wait-function F] ...
//   klynaa-bench --ceilings [--data-dir D]
//
// Load mode drives the ingress (docs/ingress-protocol.md) with N DEALER connections, one thread
// each, every one keeping up to W requests in flight; flat out (--rate 0) or paced
// open-loop at R requests/s in total. Ack latency is measured from the request's
// *scheduled* send time when paced (so a slow broker cannot hide behind a client that
// waits for it: no coordinated omission), from the actual send time when flat out.
// Every K-th request (--e2e-every K) is sent as op=invoke of the waited function; its
// reply comes when the job has finished, which gives the end-to-end latency samples.
// Then it polls the admin endpoint's /stats until the waited function has no ready,
// running or retry_wait job and its `ok` count has grown by the expected number, and
// prints ONE JSON line. A run that cannot reach the broker, gets a rejection, or does
// not complete within --timeout prints the reason on stderr and exits 1 without a
// figure.
//
// Ceilings mode measures the machine: fsync latency, SQLite WAL synchronous=FULL
// commits (one row and 256 rows per commit) and ZeroMQ DEALER/ROUTER pipelined
// request+reply messages/s over 127.0.0.1, and prints ONE JSON line.
//
// The parts: bench_options (the command line), bench_load and bench_connection
// (load mode), bench_frames (the requests and replies), bench_admin (/stats),
// bench_spawn (--start), bench_ceilings (--ceilings), bench_common.
#include "bench/bench_ceilings.hpp"
#include "bench/bench_load.hpp"
#include "bench/bench_options.hpp"

int main(int argc, char** argv) {
  using namespace klynaa::bench;
  options o = parse(argc, argv);
  if (o.ceilings) return run_ceilings(o);
  return run_load(o);
}
