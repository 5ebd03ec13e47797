// Element-wise ops on whole tensors: residual adds, gradient accumulation, copies with casts and
// across devices, zeroing, column blocks, sums. Math in fp32.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

// y = a + b (compute dtype, same element count); y may alias a or b.
void add(const Tensor& a, const Tensor& b, const Tensor& y);
// y += x; f32 + f32 (gradients), compute dtype, or f32 into bf16 (x rounded to bf16 first; bf16
// gradients, docs/gpu-model.md §bf16 gradients).
void add_into(const Tensor& x, const Tensor& y);
// dst = src element by element: same count; f32/bf16 in any pair; any devices (a copy to the host
// waits for the device).
void copy(const Tensor& src, const Tensor& dst);
void zero(const Tensor& t);
// dst[:, dst_col : dst_col + cols] = src[:, src_col : src_col + cols] for 2-D tensors with the same
// rows, dtype and device (splitting a fused QKV projection, and joining its gradients).
void copy_columns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col,
                  int64_t cols);
// Sum of an f32 tensor, returned to the host (waits for the device); fixed order on both devices.
double sum(const Tensor& t);

}  // namespace moex::ops
