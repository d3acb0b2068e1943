// How many threads a process runs, from /proc: tests that bound the threads a
// component starts. Include "tests/support/threads.hpp".
#pragma once

#include <sys/types.h>

#include <fstream>
#include <string>

namespace klynaa::test {

/// The thread count of process `pid` (0: this process), from /proc/PID/status;
/// -1 when it cannot be read.
inline int thread_count(pid_t pid = 0) {
  std::ifstream status(pid == 0 ? std::string("/proc/self/status") : "/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

}  // namespace klynaa::test
