// Next-token sampling per row: greedy at temperature 0, else temperature, top-k and top-p drawn
// with the counter RNG, the tokens the CPU twin (cpu/sample.h) picks. Twin: cpu/sample.h.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::cuda {

// out[s] = the token of row x[s * cols ..] under row s's parameters in params [rows, 10] i32 (the
// bytes of {f64 temperature, f64 top_p, i64 top_k, u64 seed, u64 draw}, ops/sample.h); x, params,
// workspace (sample_rows_workspace_bytes(rows), 8-byte aligned) and out on the device; at most
// 65535 rows a call (a grid dimension). Three
// kernels: two passes over chunks of each row in blocks of their own, then one block per row
// (~185 KiB of shared memory); no allocation and no host sync, so it can be captured. The weights
// and their exact integer sums are the CPU's, bit for bit (core/sampling_math.h), so the token is
// the CPU's. chunks: the blocks each row's first two passes are split over, 1 to 32 (tests reach
// one, the most, and chunks left empty by narrow rows); 0 picks them from the shape.
size_t sample_rows_workspace_bytes(int64_t rows);
void sample_rows_f32(const float* x, int64_t rows, int64_t cols, const int32_t* params,
                     void* workspace, int32_t* out, cudaStream_t stream, int chunks = 0);

}  // namespace moex::cuda
