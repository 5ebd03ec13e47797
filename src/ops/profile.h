// Per-op time for benchmarks: while enabled, every op (and the MoE layer, the optimizer) on a GPU
// is bracketed by CUDA events on its stream, and one on the CPU by the host clock (its wall time);
// the report sums the time per op name. Off by default (then a scope costs one branch). Scopes may
// nest: a name "a.b" is a part of op "a" (its time is inside a's too). "gap_before.a" is the device
// time between the end of the outermost scope before an outermost "a" and its start: unscoped work,
// or the device idle while the host synchronises or launches. "host.a" is the host's wall time
// inside "a": launches, host work and waits for the device.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moex::ops {

void profile_enable(bool on);
bool profile_enabled();

class ProfileScope {
 public:
  ProfileScope(const char* name, const Device& device);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  int slot_ = -1;
  const char* cpu_name_ = nullptr;  // a CPU op's name (string literals only)
  int stream_ordinal_ = 0;
  double host_start_ms_ = 0;
};

// Milliseconds per op name since the last report (or enable), largest first; waits for the device.
std::vector<std::pair<std::string, double>> profile_report();

}  // namespace moex::ops
