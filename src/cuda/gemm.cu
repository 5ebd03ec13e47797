#include "cuda/cublas_api.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm.h"

namespace moex::cuda {

void check_gemm_shape(const GemmShape& s) {
  MOEX_CHECK(s.m >= 0 && s.n >= 0 && s.k >= 0, "gemm: negative size m=", s.m, " n=", s.n,
             " k=", s.k);
  MOEX_CHECK(s.lda >= (s.trans_a ? s.m : s.k), "gemm: lda ", s.lda, " too small");
  MOEX_CHECK(s.ldb >= (s.trans_b ? s.k : s.n), "gemm: ldb ", s.ldb, " too small");
  MOEX_CHECK(s.ldc >= s.n, "gemm: ldc ", s.ldc, " too small");
  MOEX_CHECK(s.m < (int64_t{1} << 31) && s.n < (int64_t{1} << 31) && s.k < (int64_t{1} << 31),
             "gemm: sizes must fit in int");
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands and pass
// each one's own transpose flag (a row-major [R, C] buffer is a column-major [C, R] one).

void gemm_bf16(cublasHandle_t handle, const GemmShape& s, const void* a, int64_t stride_a,
               const void* b, int64_t stride_b, void* c, int64_t stride_c, bool c_is_f32, int batch,
               float alpha, float beta) {
  check_gemm_shape(s);
  MOEX_CHECK(batch >= 1, "gemm_bf16: batch must be >= 1, got ", batch);
  if (s.m == 0 || s.n == 0) return;
  const cublasOperation_t op_b = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t c_type = c_is_f32 ? CUDA_R_32F : CUDA_R_16BF;
  if (batch == 1) {
    CUBLAS_CHECK(cublas_api().gemm_ex(
        handle, op_b, op_a, static_cast<int>(s.n), static_cast<int>(s.m), static_cast<int>(s.k),
        &alpha, b, CUDA_R_16BF, static_cast<int>(s.ldb), a, CUDA_R_16BF, static_cast<int>(s.lda),
        &beta, c, c_type, static_cast<int>(s.ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    CUBLAS_CHECK(cublas_api().gemm_strided_batched_ex(
        handle, op_b, op_a, static_cast<int>(s.n), static_cast<int>(s.m), static_cast<int>(s.k),
        &alpha, b, CUDA_R_16BF, static_cast<int>(s.ldb), stride_b, a, CUDA_R_16BF,
        static_cast<int>(s.lda), stride_a, &beta, c, c_type, static_cast<int>(s.ldc), stride_c,
        batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

void gemm_f32(cublasHandle_t handle, const GemmShape& s, const float* a, const float* b, float* c,
              float alpha, float beta) {
  check_gemm_shape(s);
  if (s.m == 0 || s.n == 0) return;
  CUBLAS_CHECK(cublas_api().sgemm(
      handle, s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(s.n), static_cast<int>(s.m), static_cast<int>(s.k), &alpha, b,
      static_cast<int>(s.ldb), a, static_cast<int>(s.lda), &beta, c, static_cast<int>(s.ldc)));
}

namespace {
GroupedGemmStats g_grouped_stats;
}  // namespace

GroupedGemmStats grouped_gemm_stats() {
  return g_grouped_stats;
}

void gemm_grouped_bf16(cublasHandle_t handle, const GroupedGemm& g, const void* const* a_ptrs,
                       const void* const* b_ptrs, void* const* c_ptrs, const void* const* host_a,
                       const void* const* host_b, const void* const* host_c, bool c_is_f32,
                       float alpha, float beta) {
  const int count = static_cast<int>(g.m.size());
  MOEX_CHECK(g.n.size() == g.m.size() && g.k.size() == g.m.size() && g.lda.size() == g.m.size() &&
                 g.ldb.size() == g.m.size() && g.ldc.size() == g.m.size(),
             "gemm_grouped_bf16: per-problem arrays differ in length");
  if (count == 0) return;
  for (int i = 0; i < count; ++i)
    MOEX_CHECK(g.m[i] > 0 && g.n[i] > 0 && g.k[i] > 0, "gemm_grouped_bf16: problem ", i,
               " has a zero size");
  auto looped = [&] {
    ++g_grouped_stats.looped_calls;
    for (int i = 0; i < count; ++i)
      gemm_bf16(
          handle,
          GemmShape{g.trans_a, g.trans_b, g.m[i], g.n[i], g.k[i], g.lda[i], g.ldb[i], g.ldc[i]},
          host_a[i], 0, host_b[i], 0, const_cast<void*>(host_c[i]), 0, c_is_f32, 1, alpha, beta);
  };
  // bf16 in, fp32 out is not a combination the grouped API supports: loop directly.
  if (c_is_f32) return looped();
  // One problem per group, so the per-group arrays are the per-problem ones.
  std::vector<cublasOperation_t> op_b(count, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  std::vector<cublasOperation_t> op_a(count, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  std::vector<float> alphas(count, alpha), betas(count, beta);
  std::vector<int> group_size(count, 1);
  // Column-major view: swap A and B (and m and n), as in gemm_bf16.
  const cublasStatus_t st = cublas_api().gemm_grouped_batched_ex(
      handle, op_b.data(), op_a.data(), g.n.data(), g.m.data(), g.k.data(), alphas.data(), b_ptrs,
      CUDA_R_16BF, g.ldb.data(), a_ptrs, CUDA_R_16BF, g.lda.data(), betas.data(), c_ptrs,
      CUDA_R_16BF, g.ldc.data(), count, group_size.data(), CUBLAS_COMPUTE_32F);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    ++g_grouped_stats.not_supported;
    return looped();
  }
  CUBLAS_CHECK(st);
  ++g_grouped_stats.grouped_calls;
}

}  // namespace moex::cuda
