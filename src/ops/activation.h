// The MLP activations on rows of the first projection's output h, in the compute dtype:
//   SwiGLU: h [N, 2F] (gate columns, then up columns) -> a [N, F] = silu(gate) * up
//   GELU:   h [N, F] -> a [N, F] (tanh approximation, or exact erf)
#pragma once

#include "core/tensor.h"

namespace moex::ops {

enum class Activation { kGeluTanh, kGeluExact, kSwiGLU };

void activation(Activation kind, const Tensor& h, const Tensor& a);
// dh from h and da (dh written). `a`, when defined, gets the forward's activations again, the
// same bits activation() wrote, and may be da itself (overwritten after it is read): a layer then
// need not keep a for its weight gradient (docs/gpu-model.md §What a training forward keeps).
void activation_backward(Activation kind, const Tensor& h, const Tensor& da, const Tensor& dh,
                         const Tensor& a = Tensor());

}  // namespace moex::ops
