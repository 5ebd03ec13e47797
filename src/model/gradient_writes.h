// Which gradient entries of a model's ParamBuffer backward has written since the last
// Model::zero_grad() (docs/gpu-model.md §Gradients without zero_grad). zero_grad() does not clear
// the buffer: the first writer of an entry overwrites it (a GEMM with beta 0, not a memset plus a
// read-modify-write epilogue), later writers add, and entries nothing wrote are zeroed when the
// buffer is read.
#pragma once

#include <vector>

#include "core/arena.h"

namespace moex::model {

class GradientWrites {
 public:
  explicit GradientWrites(const ParamBuffer& grads);

  // Every entry holds nothing of this step (its contents are stale).
  void reset();
  // The same for entries [first, last] (a window the next micro-batch's backward reuses).
  void reset(int first, int last);
  // True when entries [first, first + count) hold nothing of this step: the caller then writes
  // them whole instead of adding. Either way they count as written from here on. The entries of
  // one call must be all written or all not (a fused view is claimed as one).
  bool claim(int first, int count);
  // True when some entry of [first, last] holds this step's values.
  bool any_written(int first, int last) const;
  // Zeroes entries [first, first + count) unless written (for writers that only add, such as a
  // scatter) and marks them written.
  void zero_if_unwritten(int first, int count);
  // Zeroes every unwritten entry (each run of neighbours in one allocation with one fill) and marks
  // all written.
  void zero_unwritten();
  // The same for entries [first, last].
  void zero_unwritten(int first, int last);

 private:
  const ParamBuffer& grads_;
  std::vector<bool> written_;  // [entries]
  bool all_written_ = false;
};

}  // namespace moex::model
