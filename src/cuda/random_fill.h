// Device-side random fills from Philox (seed, offset, index): benchmarks and tests never use zeros.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

// Uniform in [lo, hi): element i is lo + (hi - lo) * philox_uniform(seed, offset, i).
void fill_uniform_f32(float* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi,
                      cudaStream_t stream);
void fill_uniform_bf16(void* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi,
                       cudaStream_t stream);

}  // namespace moex::cuda
