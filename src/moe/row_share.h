// Duplicate Token Dropping's split of an exchanged block (docs/parallelism.md §DTD): the tp ranks
// hold the same block of rows, and tp rank j sends only its share, rows [begin, begin + count).
// Shared by the CPU exchange (moe/expert_exchange.cpp) and the GPU layer (cuda/moe_layer_cuda.cu),
// so that both cut a block the same way. Header-only, no dependencies.
#pragma once

#include <algorithm>
#include <cstdint>

namespace moex::moe {

struct RowShare {
  int64_t begin, count;
};

// Share j of a block of `rows` rows split over `parts` ranks: ceil(rows / parts) rows each, the
// last ones shorter or empty (share 0 is the largest).
inline RowShare row_share(int64_t rows, int parts, int j) {
  const int64_t per = (rows + parts - 1) / parts;
  const int64_t begin = std::min(rows, j * per);
  return {begin, std::min(rows, begin + per) - begin};
}

}  // namespace moex::moe
