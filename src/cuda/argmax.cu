#include <cfloat>

#include "cuda/argmax.h"
#include "cuda/cuda_check.h"

namespace moex::cuda {
namespace {

constexpr int kThreads = 512;

// The better of two (value, index) candidates: the larger value, the lower index on a tie.
__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__global__ void __launch_bounds__(kThreads)
    argmax_rows_kernel(const float* x, int64_t cols, int32_t* out) {
  __shared__ float warp_v[kThreads / 32];
  __shared__ int warp_i[kThreads / 32];
  const float* row = x + blockIdx.x * cols;
  float v = -FLT_MAX;
  int i = static_cast<int>(cols);  // loses every tie against a real index
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) better(v, i, row[c], static_cast<int>(c));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  if (threadIdx.x % 32 == 0) {
    warp_v[threadIdx.x / 32] = v;
    warp_i[threadIdx.x / 32] = i;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? warp_v[threadIdx.x] : -FLT_MAX;
    i = threadIdx.x < kThreads / 32 ? warp_i[threadIdx.x] : static_cast<int>(cols);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    // A row of only -inf (or NaN) keeps no candidate: index 0, as std::max_element gives.
    if (threadIdx.x == 0) out[blockIdx.x] = i < cols ? i : 0;
  }
}

}  // namespace

void argmax_rows_f32(const float* x, int64_t rows, int64_t cols, int32_t* out,
                     cudaStream_t stream) {
  if (rows == 0) return;
  argmax_rows_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, cols, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moex::cuda
