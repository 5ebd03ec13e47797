// CUDA_CHECK / CUBLAS_CHECK / MOEX_LAUNCH_CHECK: every CUDA call and every launch is checked and
// failures throw moex::Error with file:line and the failing expression (docs/architecture.md
// §Core types).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

namespace moex::cuda {
const char* cublas_status_name(cublasStatus_t status);
}  // namespace moex::cuda

#define CUDA_CHECK(expr)                                                             \
  do {                                                                               \
    const cudaError_t moex_cuda_err_ = (expr);                                       \
    if (moex_cuda_err_ != cudaSuccess) {                                             \
      ::moex::detail::throw_error(                                                   \
          __FILE__, __LINE__, #expr,                                                 \
          ::moex::detail::cat("CUDA error ", cudaGetErrorName(moex_cuda_err_), ": ", \
                              cudaGetErrorString(moex_cuda_err_)));                  \
    }                                                                                \
  } while (0)

#define CUBLAS_CHECK(expr)                                                         \
  do {                                                                             \
    const cublasStatus_t moex_cublas_st_ = (expr);                                 \
    if (moex_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                \
      ::moex::detail::throw_error(                                                 \
          __FILE__, __LINE__, #expr,                                               \
          ::moex::detail::cat("cuBLAS error ",                                     \
                              ::moex::cuda::cublas_status_name(moex_cublas_st_))); \
    }                                                                              \
  } while (0)

// After every <<<...>>>: catches bad launch configurations at the launch site.
#define MOEX_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
