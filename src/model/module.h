// What every model module shares: parameters declared under Hugging Face names into one
// ParamBuffer layout, used three ways (docs/architecture.md §Numerics):
//   master   f32, the weights the optimizer updates and checkpoints hold;
//   compute  what the kernels read: the master itself on the CPU, a bf16 copy on the GPU;
//   grads    f32 gradients, accumulated over micro-batches.
// Modules take and return Tensors; activations of a step come from the model's Arena.
#pragma once

#include <string>

#include "core/arena.h"

namespace moex::model {

struct ParamViews {
  const ParamBuffer& master;
  const ParamBuffer& compute;
  const ParamBuffer& grads;
};

// The compute view of one parameter and its gradient.
struct Param {
  Tensor w, g;
  int index = -1;
  explicit operator bool() const { return index >= 0; }
};

inline Param bind_param(const ParamViews& views, int index) {
  if (index < 0) return {};
  return {views.compute.tensor(index), views.grads.tensor(index), index};
}

}  // namespace moex::model
