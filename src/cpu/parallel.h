// When the CPU kernels fork an OpenMP team: below this many elements of work the fork and the
// barrier cost more than the loop (a few microseconds against a loop of a few thousand flops).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace moex::cpu {

constexpr int64_t kMinParallelWork = int64_t{1} << 14;

// The OpenMP team for a piece of work of `flops` arithmetic operations reading `bytes` of memory
// (weights, mostly), split into `tasks` independent parts: one thread per kFlopsPerThread or per
// kBytesPerThread, whichever asks more (waking a thread costs more than a small share of the work:
// docs/cpu-blas.md), at most one per task and omp_get_max_threads(); 1 inside a parallel region.
constexpr double kFlopsPerThread = 4.0 * (1 << 20);    // ~80 us of one core's multiply-adds
constexpr double kBytesPerThread = 512.0 * (1 << 10);  // ~60 us of one core's reads
inline int threads_for(double flops, double bytes = 0, int64_t tasks = INT64_MAX) {
  if (omp_in_parallel()) return 1;
  const double want =
      std::min<double>({std::max(flops / kFlopsPerThread, bytes / kBytesPerThread),
                        static_cast<double>(tasks), static_cast<double>(omp_get_max_threads())});
  return std::max(1, static_cast<int>(want));
}

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
