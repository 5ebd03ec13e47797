#include "core/rng.h"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/random_fill.h"

namespace moex::cuda {
namespace {

template <typename T>
__global__ void fill_uniform_kernel(T* dst, int64_t n, uint64_t seed, uint64_t offset, float lo,
                                    float hi) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float v = lo + (hi - lo) * philox_uniform(seed, offset, static_cast<uint64_t>(i));
    if constexpr (sizeof(T) == 4) {
      dst[i] = v;
    } else {
      dst[i] = __float2bfloat16_rn(v);
    }
  }
}

}  // namespace

void fill_uniform_f32(float* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi,
                      cudaStream_t stream) {
  if (n == 0) return;
  fill_uniform_kernel<float><<<grid_for(n, 256), 256, 0, stream>>>(dst, n, seed, offset, lo, hi);
  MOEX_LAUNCH_CHECK();
}

void fill_uniform_bf16(void* dst, int64_t n, uint64_t seed, uint64_t offset, float lo, float hi,
                       cudaStream_t stream) {
  if (n == 0) return;
  fill_uniform_kernel<__nv_bfloat16><<<grid_for(n, 256), 256, 0, stream>>>(
      static_cast<__nv_bfloat16*>(dst), n, seed, offset, lo, hi);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
