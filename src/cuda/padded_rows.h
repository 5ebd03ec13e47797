// The expert rows a padded dropless layout uses. Rows are [E, C] (expert e's at e * C); expert e
// computes on its first min(C, counts[e] rounded up to `multiple`) rows, and nothing reads the
// rows after those. Kernels over all E x C rows skip them (docs/gpu-model.md §Padded rows).
#pragma once

#include <cstdint>

namespace moex::cuda {

struct PaddedRows {
  const int32_t* counts = nullptr;  // [E] routed rows per expert, on the device; null: every row
  int64_t capacity = 0;             // C
  int64_t multiple = 1;             // rows are computed in steps of this many
};

}  // namespace moex::cuda
