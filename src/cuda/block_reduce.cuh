// Deterministic block-wide sum: warp butterflies, then the warp sums added in warp order. The
// order depends on kThreads alone, so equal inputs give equal bits on every run.
#pragma once

#include <cuda_runtime.h>

namespace moex::cuda {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Every thread of the block must call it; the result is valid in thread 0 (and in all threads).
template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  __shared__ T warp_sums[kThreads / 32];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  T total = warp_sums[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums may be reused by a following call
  return total;
}

}  // namespace moex::cuda
