// y = x W^T (+ b), W stored [out, in] as torch.nn.Linear, and its backward.
// Dtypes: x, W, b, y and dx in the device's compute dtype (f32 on the CPU, bf16 on CUDA with fp32
// accumulation); dW and db are fp32, accumulated so that micro-batches add into one gradient.
#pragma once

#include "core/tensor.h"

namespace moex::ops {

void linear(const Tensor& x,   // [N, in]
            const Tensor& w,   // [out, in]
            const Tensor& b,   // [out] or undefined
            const Tensor& y);  // [N, out], written; may be f32 on CUDA too (no bias then)

// dx = dy W (written, or added when accumulate_dx); dW = dy^T x (added when accumulate_dw,
// written otherwise); db += colsum(dy). Without dw (only dx) x may be undefined.
void linear_backward(const Tensor& dy,  // [N, out]
                     const Tensor& x,   // [N, in] (undefined without dw)
                     const Tensor& w,   // [out, in]
                     const Tensor& dx,  // [N, in] or undefined
                     bool accumulate_dx,
                     const Tensor& dw,  // [out, in] f32 (or bf16 on CUDA) or undefined
                     bool accumulate_dw,
                     const Tensor& db);  // [out] f32 (or bf16 on CUDA) or undefined, accumulated

}  // namespace moex::ops
