// The broker's clock: milliseconds since the Unix epoch, passed in
// (broker_options::clock) rather than read from the wall by each part, so that
// the parts' tests choose the time. The loop reads it once per step and hands
// `now` to every part it calls (admission.hpp, completion.hpp, dispatcher.hpp,
// timers.hpp); none of them reads a clock of its own.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>

namespace klynaa::broker {

/// Returns the time in ms since the Unix epoch. Called on the loop thread only.
using clock_fn = std::function<int64_t()>;

/// The system clock in ms since the Unix epoch: the default clock_fn.
inline int64_t wall_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

}  // namespace klynaa::broker
