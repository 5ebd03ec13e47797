// When the CPU kernels fork an OpenMP team: below this many elements of work the fork and the
// barrier cost more than the loop (a few microseconds against a loop of a few thousand flops).
#pragma once

#include <cstdint>

namespace moex::cpu {

constexpr int64_t kMinParallelWork = int64_t{1} << 14;

}  // namespace moex::cpu
