// klynaa-bench's command line: the usage text and the parser (bench_options.hpp).
#include "bench/bench_options.hpp"

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>

#include "bench/bench_common.hpp"

namespace klynaa::bench {

void usage(int code) {
  (code ? std::cerr : std::cout) << R"(usage:
  klynaa-bench [--start | --ingress E [--admin HOST:PORT] [--pid P] | --data-dir D] [load options]
  klynaa-bench --ceilings [--data-dir D] [--pg-url URL]

where the broker is:
  --start              spawn `klynaa run` (next to this executable, or --klynaa PATH) on a
                       temporary data dir with ephemeral ports, and stop it afterwards
  --klynaa PATH        the klynaa executable for --start
  --broker-only        with --start: spawn `klynaa broker` (no node) instead of `klynaa run`:
                       the ingress alone, nothing runs the jobs; implies --no-wait
  --config F           passed to `klynaa run --config F` with --start
  --store B            with --start: the store backend, sqlite | postgres | journal
                       (sets KLYNAA_STORE_BACKEND for it; default: the config's)
  --tmp-dir DIR        where --start makes its data dir (default $TMPDIR or /tmp)
  --keep               keep the --start data dir (its klynaa.log) afterwards
  --data-dir D         an already running broker's data dir: reads D/broker.json
  --ingress E          the ingress endpoint (tcp://HOST:PORT)
  --admin HOST:PORT    the admin endpoint (needed to wait for completion)
  --pid P              the broker's pid, for rss_mb (read from broker.json otherwise)

load options:
  --connections N      DEALER connections, one thread each (default 4)
  --window W           requests in flight per connection (default 256)
  --count C            requests in all (default 100000)
  --rate R             requests/s in total, paced open-loop; 0 = flat out (default 0)
  --type T             event type or function name to publish (default worker.location)
  --wait-function F    the function whose jobs to wait for (default: the one T creates)
  --keys K             distinct ordering keys (worker_id / pickup_id) (default 100000)
  --e2e-every K        every K-th request is an op=invoke of F: e2e latency samples
                       (default 100; 1 = every request; 0 = none)
  --expect J           jobs of F the run must complete (default: --count)
  --no-wait            measure ingress acks only; do not wait for the jobs
  --timeout S          bound on the whole run in seconds (default 300)
  --fsync-samples N    fsync samples (default 500; the load mode probes the data dir too)

ceilings options:
  --zmq-messages N     request+reply pairs for the ZeroMQ ceiling (default 1000000)
  --pg-url URL         also measure the PostgreSQL store (broker/pg_store.cpp) on this
                       database, as klynaa_pg_store: the same workload as klynaa_store,
                       with each commit's time split into encode/execute/commit
)";
  std::exit(code);
}

options parse(int argc, char** argv) {
  options o;
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) fail(2, std::string(argv[i]) + " needs a value");
    return argv[++i];
  };
  auto num = [&](int& i) -> double {
    std::string flag = argv[i], v = need(i);
    try {
      size_t pos = 0;
      double d = std::stod(v, &pos);
      if (pos != v.size() || !std::isfinite(d) || d < 0) throw std::invalid_argument(v);
      return d;
    } catch (...) {
      fail(2, flag + " takes a non-negative number, got '" + v + "'");
    }
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") usage(0);
    else if (a == "--ceilings") o.ceilings = true;
    else if (a == "--start") o.start = true;
    else if (a == "--broker-only") o.broker_only = true;
    else if (a == "--keep") o.keep = true;
    else if (a == "--no-wait") o.wait = false;
    else if (a == "--ingress") o.ingress = need(i);
    else if (a == "--admin") o.admin = need(i);
    else if (a == "--data-dir") o.data_dir = need(i);
    else if (a == "--klynaa") o.klynaa = need(i);
    else if (a == "--config") o.config = need(i);
    else if (a == "--store") o.store = need(i);
    else if (a == "--tmp-dir") o.tmp_dir = need(i);
    else if (a == "--pid") o.pid = static_cast<int>(num(i));
    else if (a == "--connections") o.connections = static_cast<int>(num(i));
    else if (a == "--window") o.window = static_cast<int>(num(i));
    else if (a == "--count") o.count = static_cast<uint64_t>(num(i));
    else if (a == "--rate") o.rate = num(i);
    else if (a == "--type") o.type = need(i);
    else if (a == "--wait-function") o.wait_function = need(i);
    else if (a == "--keys") o.keys = static_cast<uint64_t>(num(i));
    else if (a == "--e2e-every") o.e2e_every = static_cast<uint64_t>(num(i));
    else if (a == "--expect") o.expect = static_cast<uint64_t>(num(i));
    else if (a == "--timeout") o.timeout_s = num(i);
    else if (a == "--fsync-samples") o.fsync_samples = static_cast<int>(num(i));
    else if (a == "--zmq-messages") o.zmq_messages = static_cast<uint64_t>(num(i));
    else if (a == "--pg-url") o.pg_url = need(i);
    else {
      std::cerr << "klynaa-bench: unknown option " << a << "\n";
      usage(2);
    }
  }
  if (o.connections < 1 || o.connections > 256) fail(2, "--connections must be 1..256");
  if (o.window < 1) fail(2, "--window must be at least 1");
  if (o.count < 1) fail(2, "--count must be at least 1");
  if (o.keys < 1) fail(2, "--keys must be at least 1");
  if (o.timeout_s <= 0) fail(2, "--timeout must be positive");
  if (o.fsync_samples < 0) fail(2, "--fsync-samples must be >= 0");
  if (!o.store.empty() && o.store != "sqlite" && o.store != "postgres" && o.store != "journal")
    fail(2, "--store must be sqlite, postgres or journal, got '" + o.store + "'");
  if (!o.store.empty() && !o.start) fail(2, "--store needs --start (it sets the spawned broker's store)");
  if (o.tmp_dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    o.tmp_dir = t && *t ? t : "/tmp";
  }
  return o;
}

}  // namespace klynaa::bench
