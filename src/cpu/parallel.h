// When the CPU kernels fork an OpenMP team: below this many elements of work the fork and the
// barrier cost more than the loop (a few microseconds against a loop of a few thousand flops).
#pragma once

#include <algorithm>
#include <cstdint>

namespace moex::cpu {

constexpr int64_t kMinParallelWork = int64_t{1} << 14;

// Accumulating into a shared [dim] or [rows, dim] gradient: threads own blocks of 64 columns
// and each calls fn(c0, c1) over its columns, walking its rows in order. No races on repeated
// rows, no per-thread partial buffers, and sums that do not depend on the thread count.
template <typename Fn>
void for_column_blocks(int64_t dim, int64_t work, Fn fn) {
  constexpr int64_t kColumnBlock = 64;
  const int64_t num_blocks = (dim + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (work >= kMinParallelWork)
  for (int64_t blk = 0; blk < num_blocks; ++blk)
    fn(blk * kColumnBlock, std::min(dim, (blk + 1) * kColumnBlock));
}

}  // namespace moex::cpu
