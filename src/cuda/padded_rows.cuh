// Device side of cuda/padded_rows.h.
#pragma once

#include "cuda/padded_rows.h"

namespace moex::cuda {

// Whether buffer row `row` is one its expert computes on.
__device__ inline bool padded_row_used(const PaddedRows& p, int64_t row) {
  if (p.counts == nullptr) return true;
  const int64_t e = row / p.capacity;
  const int64_t rounded = (p.counts[e] + p.multiple - 1) / p.multiple * p.multiple;
  return row - e * p.capacity < rounded;  // rounded may pass C: then all of e's rows
}

}  // namespace moex::cuda
