// Host wall-clock time in milliseconds, for the timers of benchmarks and the per-phase host times
// the engine reports.
#pragma once

#include <chrono>

namespace moex {

using SteadyClock = std::chrono::steady_clock;

// Milliseconds since `start`.
inline double ms_since(SteadyClock::time_point start) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - start).count();
}

// Milliseconds on the steady clock (differences of two calls are durations).
inline double now_ms() {
  return std::chrono::duration<double, std::milli>(SteadyClock::now().time_since_epoch()).count();
}

}  // namespace moex
