// Kernel launches that let the next kernel in the stream start early (programmatic dependent
// launch, docs/gpu-model.md §Decoding). A decode step is some fifty short kernels; without this
// each one's launch and block start-up waits for the whole previous kernel to finish and flush.
//
// The contract: a kernel launched with launch_kernel calls wait_for_previous_kernel() before it
// touches global memory. Its blocks may then be resident while the kernel before it still runs,
// but they do nothing until that kernel has finished and its writes are visible, so the order of
// reads and writes is exactly that of a plain launch. A kernel that does not call it must be
// launched with <<<>>> instead.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda/cuda_check.h"
#include "cuda/device.h"

namespace moex::cuda {

// Waits for the kernel before this one in the stream to finish (at once when this one was not
// launched early), then lets the kernel after this one launch early.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// wait_for_previous_kernel() as a function object (few_rows_unit's before_x).
struct WaitForPreviousKernel {
  __device__ void operator()() const { wait_for_previous_kernel(); }
};

// kernel<<<grid, block, smem, stream>>>(args...), allowed to launch before the kernel ahead of it
// finishes when programmatic_launch_enabled().
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = programmatic_launch_enabled() ? 1 : 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace moex::cuda
