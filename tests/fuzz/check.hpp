// The fuzz targets' own check: a failed one prints where and aborts, which
// libFuzzer (and replay_main.cpp) report as a finding with the input.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace klynaa::fuzz {

[[noreturn]] inline void violated(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
  std::abort();
}

}  // namespace klynaa::fuzz

#define FUZZ_CHECK(cond)                                        \
  do {                                                          \
    if (!(cond)) ::klynaa::fuzz::violated(__FILE__, __LINE__, #cond); \
  } while (0)
