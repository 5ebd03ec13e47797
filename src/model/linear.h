// y = x W^T (+ b) on the CPU, with its backward; W is stored [out, in] as torch.nn.Linear.
#pragma once

#include <cstdint>

namespace moex::model {

void linear_forward(const float* x,  // [n, in]
                    const float* w,  // [out, in]
                    const float* b,  // [out] or null
                    int64_t n, int64_t in, int64_t out,
                    float* y);  // [n, out]

// dx = dy W (written, or added when accumulate_dx); dW += dy^T x; db += colsum(dy).
void linear_backward(const float* dy,  // [n, out]
                     const float* x,   // [n, in]
                     const float* w,   // [out, in]
                     int64_t n, int64_t in, int64_t out,
                     float* dx,  // [n, in] or null
                     bool accumulate_dx,
                     float* dw,   // [out, in], accumulated
                     float* db);  // [out] or null, accumulated

}  // namespace moex::model
