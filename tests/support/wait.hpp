// Waiting on a condition with a deadline: the one wait-until helper of every
// test suite (unit and integration). Include "tests/support/wait.hpp".
#pragma once

#include <chrono>
#include <thread>

namespace klynaa::test {

/// Asks `cond` every `every` until it holds or `timeout` has passed, and once
/// more at the deadline; returns whether it held. `every` is 20 ms by default, for
/// conditions that read a file or ask a server; in-memory conditions may ask more
/// often.
template <class Cond>
bool wait_for(Cond&& cond, std::chrono::milliseconds timeout = std::chrono::seconds(10),
              std::chrono::milliseconds every = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

}  // namespace klynaa::test
