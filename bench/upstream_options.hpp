// klynaa-upstream's command line (bench/fake_upstream.cpp): every option with
// its default, the --help text, and the parser that checks them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace klynaa::upstream {

struct options {
  std::string bind = "127.0.0.1";
  int port = 0;
  int64_t latency_ms = 0;
  std::optional<int64_t> step_latency_ms;  ///< --latency-step-ms
  double step_after_s = 0;                 ///< --step-after-s
  int64_t capacity = 0;                    ///< 0: unlimited
  int64_t retry_after_s = 1;
  int64_t tokens_per_user = 1;
  std::string api_key;  ///< "": any key, or none, is accepted
  int64_t h2_max_streams = 1000;
};

/// The options of `argv`; prints --help and exits 0, or exits 2 naming the flag
/// of a bad one.
options parse_args(int argc, char** argv);

}  // namespace klynaa::upstream
