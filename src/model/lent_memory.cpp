#include "model/lent_memory.h"

#include <algorithm>

#include "core/arena.h"
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

size_t lent_front_bytes(const Shape& shape, DType dtype) {
  return aligned_bytes(static_cast<size_t>(shape.numel()) * dtype_size(dtype));
}

Tensor take_front(Tensor& lent, const Shape& shape, DType dtype) {
  const size_t bytes = lent_front_bytes(shape, dtype), elem = dtype_size(lent.dtype());
  if (!lent.defined() || bytes > lent.nbytes() || bytes % elem != 0) return Tensor();
  Tensor front = Tensor::from_external(lent.raw_data(), shape, dtype, lent.device());
  lent = lent.slice(static_cast<int64_t>(bytes / elem), lent.numel());
  return front;
}

}  // namespace moex::model
