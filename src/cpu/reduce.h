// Reductions over long arrays whose result does not depend on the OpenMP thread count: the array
// is cut into fixed chunks, each chunk is summed in order, and the chunk sums are added in order.
// The gradient norm (and so gradient clipping) must give the same bits with 1 or 64 threads.
#pragma once

#include <cstdint>

namespace moex::cpu {

// sum_i x[i]^2 in double.
double sum_of_squares(const float* x, int64_t n);

}  // namespace moex::cpu
