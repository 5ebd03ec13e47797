// cuBLAS, loaded the first time a CUDA context needs it rather than when the program starts.
// Linking libcublas made every process pay ~0.4 s at start-up (the dynamic loader relocating
// libcublasLt, ~0.5 GB) whether or not it touched a GPU: every `moex` command and every CPU test
// (docs/architecture.md §Testing, "Start-up"). Call sites use cublas_api().gemm_ex(...) where
// they would have called cublasGemmEx(...): the same functions, resolved from the library once.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>

namespace moex::cuda {

// The two GEMMs below have C++ overloads in cublas_api.h (an older compute-type argument), so
// their pointer types are spelled out: the C functions the library exports.
using CublasGemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                        int, int, const void*, const void*, cudaDataType, int,
                                        const void*, cudaDataType, int, const void*, void*,
                                        cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
using CublasGemmStridedBatchedEx = cublasStatus_t (*)(
    cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*, const void*,
    cudaDataType, int, long long, const void*, cudaDataType, int, long long, const void*, void*,
    cudaDataType, int, long long, int, cublasComputeType_t, cublasGemmAlgo_t);

struct CublasApi {
  decltype(&cublasCreate_v2) create;
  decltype(&cublasDestroy_v2) destroy;
  decltype(&cublasSetStream_v2) set_stream;
  decltype(&cublasSetWorkspace_v2) set_workspace;
  decltype(&cublasSetMathMode) set_math_mode;
  decltype(&cublasSgemm_v2) sgemm;
  CublasGemmEx gemm_ex;
  CublasGemmStridedBatchedEx gemm_strided_batched_ex;
  decltype(&cublasGemmGroupedBatchedEx) gemm_grouped_batched_ex;
};

// Opens libcublas.so.<major of the headers built against> on the first call (the loader's search
// path, then the toolkit's library directory of the build, then /usr/local/cuda); an error names
// the library and what dlopen said when it cannot be loaded or lacks a function.
const CublasApi& cublas_api();

// The cuBLASLt functions moex uses (cuda/varying_gemm.h), from libcublasLt.so.<major>, found the
// same way. libcublas loads it anyway, so opening it costs nothing more.
struct CublasLtApi {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtDestroy) destroy;
  decltype(&cublasLtMatmulDescCreate) matmul_desc_create;
  decltype(&cublasLtMatmulDescDestroy) matmul_desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) matmul_desc_set_attribute;
  decltype(&cublasLtMatrixLayoutCreate) matrix_layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) matrix_layout_destroy;
  decltype(&cublasLtMatrixLayoutSetAttribute) matrix_layout_set_attribute;
  decltype(&cublasLtMatmulPreferenceCreate) preference_create;
  decltype(&cublasLtMatmulPreferenceDestroy) preference_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) preference_set_attribute;
  decltype(&cublasLtMatmulAlgoGetHeuristic) algo_get_heuristic;
  decltype(&cublasLtMatmul) matmul;
};
const CublasLtApi& cublaslt_api();

}  // namespace moex::cuda
