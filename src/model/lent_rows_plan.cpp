#include "model/lent_rows_plan.h"

#include <algorithm>

#include "core/error.h"

namespace moex::model {

std::vector<LentRegion> plan_lent_regions(const std::vector<int64_t>& block_begin,
                                          const std::vector<int64_t>& need, int64_t floor,
                                          int64_t align) {
  MOEX_CHECK(block_begin.size() == need.size() && align > 0,
             "plan_lent_regions: one need per block and align > 0");
  std::vector<LentRegion> regions(block_begin.size());
  int64_t top = block_begin.empty() ? 0 : block_begin.back();  // nothing lent above this
  for (size_t l = block_begin.size(); l-- > 0;) {
    top = std::min(top, block_begin[l]);
    if (need[l] <= 0) continue;
    const int64_t begin = (top - need[l]) / align * align;  // rounded down: still below top
    if (top - need[l] < floor || begin < floor) continue;
    regions[l] = {begin, top};
    top = begin;
  }
  return regions;
}

}  // namespace moex::model
