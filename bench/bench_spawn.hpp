// klynaa-bench --start: a `klynaa run` (or `klynaa broker`) of its own on a
// temporary data dir with ephemeral ports, read back from broker.json, and
// stopped on every way out (the end of the run, fail(), SIGINT and SIGTERM).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

#include "bench/bench_options.hpp"

namespace klynaa::bench {

/// The process --start spawned: its pid (-1 when none runs), its temporary dir,
/// data dir and log.
struct spawned {
  pid_t pid = -1;
  std::string dir, data_dir, log;
};

/// What --start spawned (pid -1 before and after).
const spawned& spawned_child();

/// Starts `klynaa run` (`klynaa broker` with --broker-only); fills `o.ingress`,
/// `o.admin`, `o.pid`, `o.data_dir`. Exits 1 with its log when it does not come up
/// within 30 s.
void start_klynaa(options& o);

/// Stops the spawned process (SIGTERM, SIGKILL after 15 s) and removes its dir
/// unless `o.keep`.
void cleanup_child(const options& o);

/// cleanup_child() with the --keep that set_keep_on_exit() recorded: for fail().
void cleanup_at_exit();

/// Whether cleanup_at_exit() keeps the spawned data dir (--keep).
void set_keep_on_exit(bool keep);

/// The last `n` bytes of a file.
std::string tail_of(const std::string& path, size_t n = 3000);

}  // namespace klynaa::bench
