// What every model module shares: parameters declared under Hugging Face names into one
// ParamBuffer layout, used three ways (docs/architecture.md §Numerics):
//   master   f32, the weights the optimizer updates and checkpoints hold;
//   compute  what the kernels read: the master itself on the CPU, a bf16 copy on the GPU;
//   grads    f32 gradients, accumulated over micro-batches; the first write of a step
//            overwrites (model/gradient_writes.h).
// Modules take and return Tensors; activations of a step come from the model's Arena.
#pragma once

#include <string>

#include "core/arena.h"
#include "model/gradient_writes.h"

namespace moex::model {

struct ParamViews {
  const ParamBuffer& master;
  const ParamBuffer& compute;
  const ParamBuffer& grads;
  GradientWrites* writes = nullptr;  // null: every gradient write adds (e.g. views of the host)
};

// The compute view of one parameter and its gradient. g may span `entries` neighbouring entries
// (a fused q/k/v view).
struct Param {
  Tensor w, g;
  int index = -1;
  int entries = 1;
  GradientWrites* writes = nullptr;
  explicit operator bool() const { return index >= 0; }
  // For a writer that produces the whole gradient in one op: true when it must add into g (g
  // holds this step's earlier gradients), false when it overwrites g. Counts as g's write.
  bool grad_accumulates() const { return writes == nullptr || !writes->claim(index, entries); }
  // g, zeroed first unless it holds this step's gradients: for writers that only add.
  const Tensor& grad_to_add() const {
    if (writes != nullptr && index >= 0) writes->zero_if_unwritten(index, entries);
    return g;
  }
};

inline Param bind_param(const ParamViews& views, int index) {
  if (index < 0) return {};
  return {views.compute.tensor(index), views.grads.tensor(index), index, 1, views.writes};
}

}  // namespace moex::model
