// klynaa-bench's command line (bench/klynaa_bench.cpp): every option with its
// default, the usage text, and the parser that checks them.
#pragma once

#include <cstdint>
#include <string>

namespace klynaa::bench {

struct options {
  bool ceilings = false;
  bool start = false;
  bool broker_only = false;  ///< --start spawns `klynaa broker` (no node)
  bool keep = false;
  bool wait = true;
  std::string ingress, admin, data_dir, klynaa, config, tmp_dir;
  std::string store;  ///< --start: store.backend of the spawned klynaa (empty: its default)
  int pid = 0;
  int connections = 4;
  int window = 256;
  uint64_t count = 100000;
  double rate = 0;
  std::string type = "worker.location";
  std::string wait_function;
  uint64_t keys = 100000;
  uint64_t e2e_every = 100;
  uint64_t expect = 0;  // 0 = count
  double timeout_s = 300;
  int fsync_samples = 500;
  uint64_t zmq_messages = 1000000;
  std::string pg_url;  ///< --ceilings: also measure the PostgreSQL store on this database
};

/// Prints the usage text (on stderr when `code` is not 0) and exits with `code`.
[[noreturn]] void usage(int code);

/// The options of `argv`; exits 2 naming the flag on a bad one, 0 after --help.
options parse(int argc, char** argv);

}  // namespace klynaa::bench
