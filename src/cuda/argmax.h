// The index of each row's largest value, the lowest index winning ties. Twin: cpu/argmax.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// out[s] = argmax_v x[s * cols + v]; x, out on the device. One block per row.
void argmax_rows_f32(const float* x, int64_t rows, int64_t cols, int32_t* out, cudaStream_t stream);

}  // namespace moex::cuda
