// Small bandwidth-bound kernels the model needs between GEMMs: residual adds, bias, casts, fills,
// column sums, and a deterministic sum. n is any element count; math in fp32.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::cuda {

// y = a + b on bf16 [n]; y may alias a or b.
void add_bf16(const void* a, const void* b, void* y, int64_t n, cudaStream_t stream);
// y += x on fp32 [n] (gradient accumulation).
void add_f32(const float* x, float* y, int64_t n, cudaStream_t stream);
// y[r, c] += bias[c] on bf16 y [rows, cols], bias [cols] bf16.
void add_bias_bf16(void* y, const void* bias, int64_t rows, int64_t cols, cudaStream_t stream);
// db[c] += sum_r dy[r, c]: dy bf16 [rows, cols], db fp32 [cols]; fixed summation order.
size_t column_sum_workspace_bytes(int64_t rows, int64_t cols);
void column_sum_bf16(const void* dy, int64_t rows, int64_t cols, float* db, void* workspace,
                     cudaStream_t stream);
// Fills n elements of 4 bytes (fp32 / i32) or 2 bytes (bf16) with a bit pattern.
void fill_u32(void* dst, uint32_t value, int64_t n, cudaStream_t stream);
void fill_u16(void* dst, uint16_t value, int64_t n, cudaStream_t stream);
// out[0] = sum of x[0..n) in fp32 with a fixed order (same bits every run); out is device memory.
size_t sum_workspace_bytes(int64_t n);
void sum_f32(const float* x, int64_t n, float* out, void* workspace, cudaStream_t stream);

}  // namespace moex::cuda
