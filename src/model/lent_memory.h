// Where a training forward's blocks keep activations (two of theirs, their MoE layer's expert rows)
// inside the model's gradient buffer (docs/gpu-model.md §Kept rows in gradient memory). Backward
// writes block l's gradients only after every block above it has finished its backward, so the
// gradient memory of the blocks below l holds nothing of this step while block l's activations
// wait for its backward.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moex::model {

// Elements [begin, end) of the gradient buffer; empty (begin == end): nothing lent.
struct LentRegion {
  int64_t begin = 0, end = 0;
  bool empty() const { return begin == end; }
};

// block_begin [L]: the buffer offset of block l's first gradient entry (ascending); need [L]: the
// elements block l keeps (0: none); floor: the lowest offset a region may take (what lies below it
// is written before the blocks' backward ends: a head tied to the embedding writes it in forward);
// align: every region begins on a multiple of it. Regions are stacked from the top block down:
// block l's ends at or below both its own first gradient entry and the start of the region above,
// so it covers only gradients of blocks below l, and no two regions meet. A block whose region
// would reach below floor gets none.
std::vector<LentRegion> plan_lent_regions(const std::vector<int64_t>& block_begin,
                                          const std::vector<int64_t>& need, int64_t floor,
                                          int64_t align);

// Carving lent memory (a view of the gradient buffer, of its dtype): the bytes a [shape] tensor of
// `dtype` takes at its front (256-byte aligned, so what follows stays aligned), and that tensor,
// after which `lent` starts past it; undefined (lent unchanged) when it does not fit.
size_t lent_front_bytes(const Shape& shape, DType dtype);
Tensor take_front(Tensor& lent, const Shape& shape, DType dtype);

}  // namespace moex::model
