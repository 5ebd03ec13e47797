// Internal to src/ops: how an op finds its device and reaches the CUDA twin. Only this folder
// branches on the device; a build without CUDA answers a CUDA tensor with one clear error.
#pragma once

#include <initializer_list>

#include "core/tensor.h"

#if MOEX_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/device.h"
#endif

namespace moex::ops::detail {

// The one device of every defined tensor in `ts` (an error naming the op otherwise).
Device common_device(const char* op, std::initializer_list<const Tensor*> ts);

// The compute dtype of activations and weights on a device: f32 on the CPU, bf16 on CUDA.
DType compute_dtype(const Device& device);

// Throws unless t is defined with this dtype and element count (shape checks name the op).
void expect(const char* op, const char* what, const Tensor& t, DType dtype, int64_t numel);
// expect() for training state that is fp32, or bf16 on a GPU (optimizer.grads_dtype and
// master_dtype); returns whether t is bf16.
bool expect_f32_or_gpu_bf16(const char* op, const char* what, const Tensor& t, int64_t numel);

[[noreturn]] void no_cuda(const char* op);

#if MOEX_WITH_CUDA
inline cudaStream_t stream(const Device& d) {
  return cuda::default_context(d.ordinal).stream();
}
#endif

}  // namespace moex::ops::detail

// Runs the statements on a CUDA build; elsewhere the op fails with a clear error.
#if MOEX_WITH_CUDA
#define MOEX_CUDA_TWIN(op, ...) \
  do {                          \
    __VA_ARGS__;                \
  } while (0)
#else
#define MOEX_CUDA_TWIN(op, ...) ::moex::ops::detail::no_cuda(op)
#endif
