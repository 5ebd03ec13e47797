// Internal to src/ops: a parameter-gradient output that an op accumulates (+=) into. Gradients are
// fp32, or bf16 on a GPU model with optimizer.grads_dtype "bf16" (docs/gpu-model.md §bf16
// gradients); kernels that add into fp32 (norm weights, biases, the embedding's scatter) then add
// into a zeroed fp32 scratch, and finish() adds that into the bf16 gradient.
#pragma once

#include "core/tensor.h"

namespace moex::ops::detail {

class GradOutput {
 public:
  // grad undefined: nothing to accumulate (f32() is undefined too). Checks the element count and
  // the dtype (f32, or bf16 on CUDA), naming op and what.
  GradOutput(const char* op, const char* what, const Tensor& grad, int64_t numel);
  const Tensor& f32() const { return f32_; }
  float* data() const { return f32_.defined() ? f32_.data<float>() : nullptr; }
  void finish() const;

 private:
  Tensor grad_, f32_;
};

}  // namespace moex::ops::detail
