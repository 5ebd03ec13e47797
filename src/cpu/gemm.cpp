#include "cpu/gemm.h"

#include <cblas.h>

#include "core/error.h"

namespace moex::cpu {
namespace {

template <typename T>
void check_gemm(int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c) {
  MOEX_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm sizes must be non-negative: m=", m, " n=", n, " k=", k);
  MOEX_CHECK((a && b && c) || m * n * k == 0 || (c && m * n > 0), "gemm got a null pointer");
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  check_gemm(m, n, k, a, b, c);
  if (m == 0 || n == 0) return;
  if (lda == 0) lda = trans_a ? m : k;
  if (ldb == 0) ldb = trans_b ? k : n;
  if (ldc == 0) ldc = n;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
              alpha, a, lda, b, ldb, beta, c, ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                  int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  check_gemm(m, n, k, a, b, c);
  if (m == 0 || n == 0) return;
  if (lda == 0) lda = trans_a ? m : k;
  if (ldb == 0) ldb = trans_b ? k : n;
  if (ldc == 0) ldc = n;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
              alpha, a, lda, b, ldb, beta, c, ldc);
}

void set_blas_threads(int num_threads) { openblas_set_num_threads(num_threads); }

}  // namespace moex::cpu
