// Second stage of the deterministic column sums (norm parameter gradients, bias gradients):
// out[c] += sum over p of partial[p, c], p visited in a fixed order that depends on parts alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// partial [parts, cols] fp32 (device), out [cols] fp32 accumulated.
void reduce_column_partials(const float* partial, int64_t parts, int64_t cols, float* out,
                            cudaStream_t stream);
// Two independent reductions of the same shape in one launch (dweight and dbias); out_b may be
// null (then only the first).
void reduce_column_partials(const float* partial_a, float* out_a, const float* partial_b,
                            float* out_b, int64_t parts, int64_t cols, cudaStream_t stream);

}  // namespace moex::cuda
