// Where a model hands each bucket's gradients as soon as backward has made them.
//
// - Streamed gradients (ModelState::stream_gradients, ZeRO stage 2; docs/parallelism.md §ZeRO):
//   the blocks' after each micro-batch's backward of the block, the embedding's and the head's
//   once per optimizer step, in Model::finish_gradients(). The model then reuses the storage, so
//   the sink must be done reading the gradients before it returns (on a GPU: its reads queued on
//   the model's stream).
// - A whole gradient buffer (parallel.overlap_comm, §Overlapped gradient reductions): each bucket
//   once per step, when its gradients are final. Nothing writes them afterwards, so the sink may
//   keep working on them (a detached collective) until the optimizer reads them.
#pragma once

#include "core/tensor.h"

namespace moex::model {

// Entries [first, last] of a parameter buffer, inclusive.
struct EntryRange {
  int first = 0;
  int last = -1;
};

class GradientSink {
 public:
  virtual ~GradientSink() = default;
  // grads: bucket `bucket` of Model::gradient_buckets() as one flat range (from its first entry's
  // start to its last entry's end; f32 when streamed): the gradients this micro-batch (a block) or
  // this step (an edge bucket) made. The alignment padding between entries holds arbitrary values.
  // Every rank of the run calls it for the same buckets in the same order.
  virtual void take(int bucket, const Tensor& grads) = 0;
};

}  // namespace moex::model
