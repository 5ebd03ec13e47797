// y = x W^T (+ b) for the few rows of a decode step, on tensor cores with the weights streamed
// once (cuda/few_rows_mma.cuh). cuBLAS takes larger row counts; ops::linear picks.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// The most rows the kernel takes; above it cuBLAS is faster (docs/gpu-model.md §Decoding).
constexpr int64_t kFewRowsLinearMax = 16;

// Whether the kernel takes this call: 1 <= n <= kFewRowsLinearMax, in a multiple of 8 and 16-byte
// aligned x and w.
bool few_rows_linear_fits(int64_t n, int64_t in, const void* x, const void* w);

// x [n, in] bf16, w [out, in] bf16, bias [out] bf16 or null, y [n, out] bf16 (bias added to the
// bf16-rounded product, as cuBLAS + add_bias_bf16 do) or fp32 (y_f32, no bias).
void few_rows_linear_bf16(const void* x, const void* w, const void* bias, void* y, bool y_f32,
                          int64_t n, int64_t out, int64_t in, cudaStream_t stream);

}  // namespace moex::cuda
