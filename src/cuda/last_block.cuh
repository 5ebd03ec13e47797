// The last-block hand-off of kernels whose blocks each write a part and one block then combines
// the parts: no second launch, no grid-wide barrier.
#pragma once

namespace moex::cuda {

// Every block of a group of `arrivals` blocks calls this after writing its part; it returns true
// in the one block that arrived last (the others may return), with the other blocks' writes
// visible to it. The counter counts arrivals; the last block must set it back to 0 before it
// exits, so the next launch finds it at 0.
__device__ __forceinline__ bool finished_last(int* counter, int arrivals) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == arrivals - 1;
  __syncthreads();
  if (s_last) __threadfence();
  return s_last != 0;
}

}  // namespace moex::cuda
