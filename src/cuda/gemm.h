// Row-major GEMM launchers over cuBLAS (column-major underneath): bf16 operands with fp32
// accumulation, fp32 SGEMM for the router, strided-batched and grouped forms for the experts.
//
// Every call computes, per batch entry, row-major C[M,N] = alpha * op(A) * op(B) + beta * C with
//   op(A) = A [M,K] (trans_a false) or A^T where A is [K,M];  op(B) = B [K,N] or B^T, B [N,K].
// Leading dimensions are row strides of the row-major matrices as stored.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace moex::cuda {

struct GemmShape {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
};

// Sizes non-negative and below 2^31, leading dimensions at least the stored rows' lengths; an
// error naming the first that is not.
void check_gemm_shape(const GemmShape& s);

// bf16 A, B; C bf16 (c_is_f32 false) or fp32; fp32 accumulation. batch >= 1 with element strides.
void gemm_bf16(cublasHandle_t handle, const GemmShape& s, const void* a, int64_t stride_a,
               const void* b, int64_t stride_b, void* c, int64_t stride_c, bool c_is_f32, int batch,
               float alpha = 1.0f, float beta = 0.0f);

// fp32 everywhere (the router), no TF32.
void gemm_f32(cublasHandle_t handle, const GemmShape& s, const float* a, const float* b, float* c,
              float alpha = 1.0f, float beta = 0.0f);

// Grouped bf16 GEMM: problem g has sizes m[g], n[g], k[g] (host arrays) and device pointer
// arrays a_ptrs/b_ptrs/c_ptrs. Shared transposes and leading dimensions (per problem below).
// Problems with a zero size must be filtered out by the caller.
struct GroupedGemm {
  bool trans_a = false, trans_b = false;
  std::vector<int> m, n, k, lda, ldb, ldc;
};
// cublasGemmGroupedBatchedEx supports bf16 A/B only with a bf16 C (CUBLAS_COMPUTE_32F); fp32 C
// (the weight gradients) is not among its documented type combinations and answers
// CUBLAS_STATUS_NOT_SUPPORTED. Those calls, and any call that cuBLAS answers NOT_SUPPORTED, run
// one cublasGemmEx per problem instead, from the host copies of the pointer arrays
// (host_a/b/c, same order as the device arrays). grouped_gemm_stats() counts both kinds.
void gemm_grouped_bf16(cublasHandle_t handle, const GroupedGemm& g, const void* const* a_ptrs,
                       const void* const* b_ptrs, void* const* c_ptrs, const void* const* host_a,
                       const void* const* host_b, const void* const* host_c, bool c_is_f32,
                       float alpha = 1.0f, float beta = 0.0f);
struct GroupedGemmStats {
  int64_t grouped_calls = 0;  // served by cublasGemmGroupedBatchedEx
  int64_t looped_calls = 0;   // served by one cublasGemmEx per problem
  int64_t not_supported = 0;  // grouped calls cuBLAS refused (bf16 C), then looped
};
GroupedGemmStats grouped_gemm_stats();

}  // namespace moex::cuda
