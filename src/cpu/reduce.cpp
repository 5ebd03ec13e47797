#include "cpu/reduce.h"

#include <algorithm>
#include <vector>

#include "cpu/parallel.h"

namespace moex::cpu {

double sum_of_squares(const float* x, int64_t n) {
  constexpr int64_t kChunk = int64_t{1} << 16;  // fixed: the summation order depends on it alone
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(num_chunks), 0.0);
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (int64_t c = 0; c < num_chunks; ++c) {
    double sum = 0;
    for (int64_t i = c * kChunk, end = std::min(n, (c + 1) * kChunk); i < end; ++i)
      sum += static_cast<double>(x[i]) * x[i];
    partial[static_cast<size_t>(c)] = sum;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace moex::cpu
