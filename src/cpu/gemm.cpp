#include "cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#if defined(MOEX_WITH_DNNL)
#include <dnnl.h>
#endif

#include "core/error.h"
#include "cpu/parallel.h"

// fp32 goes through oneDNN when the build found it (docs/cpu-blas.md: on this machine it is as
// fast as OpenBLAS's best kernel, about 1.8x OpenBLAS under the OPENBLAS_CORETYPE=Haswell the
// environment exports, and it threads with the same OpenMP runtime as the other kernels).
// fp64 (gradient checks only) always goes through OpenBLAS: oneDNN has no dgemm.

namespace moex::cpu {
namespace {

#if defined(MOEX_WITH_DNNL)
// oneDNN forks a team of omp_get_max_threads() for every product, however small: a decode step's
// products of a few rows then pay for waking every thread (on a 16-vCPU machine, batch-2 decode
// of a small model took 4.3 ms a step with 16 threads and 0.29 ms with 8; docs/cpu-blas.md).
// This caps the team at threads_for(the product's flops and bytes) while it lives.
class SmallProductTeam {
 public:
  SmallProductTeam(int64_t m, int64_t n, int64_t k) {
    if (omp_in_parallel()) return;  // already one thread inside a parallel region
    const int most = omp_get_max_threads();
    const double dm = static_cast<double>(m), dn = static_cast<double>(n),
                 dk = static_cast<double>(k);
    const int want = threads_for(2.0 * dm * dn * dk, 4.0 * (dm * dk + dk * dn + dm * dn));
    if (want < most) {
      saved_ = most;
      omp_set_num_threads(want);
    }
  }
  ~SmallProductTeam() {
    if (saved_ > 0) omp_set_num_threads(saved_);
  }
  SmallProductTeam(const SmallProductTeam&) = delete;
  SmallProductTeam& operator=(const SmallProductTeam&) = delete;

 private:
  int saved_ = 0;
};
#endif

template <typename T>
void check_gemm(int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c) {
  MOEX_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm sizes must be non-negative: m=", m, " n=", n,
             " k=", k);
  MOEX_CHECK((a && b && c) || m * n * k == 0 || (c && m * n > 0), "gemm got a null pointer");
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  check_gemm(m, n, k, a, b, c);
  if (m == 0 || n == 0) return;
  if (lda == 0) lda = trans_a ? m : k;
  if (ldb == 0) ldb = trans_b ? k : n;
  if (ldc == 0) ldc = n;
#if defined(MOEX_WITH_DNNL)
  if (k == 0) {  // C = beta * C, without asking oneDNN about an empty product
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  const SmallProductTeam team(m, n, k);
  const dnnl_status_t status = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha,
                                          a, lda, b, ldb, beta, c, ldc);
  MOEX_CHECK(status == dnnl_success, "dnnl_sgemm failed with status ", static_cast<int>(status),
             " (m=", m, " n=", n, " k=", k, " lda=", lda, " ldb=", ldb, " ldc=", ldc, ")");
#else
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                  const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                  double* c, int64_t ldc) {
  check_gemm(m, n, k, a, b, c);
  if (m == 0 || n == 0) return;
  if (lda == 0) lda = trans_a ? m : k;
  if (ldb == 0) ldb = trans_b ? k : n;
  if (ldc == 0) ldc = n;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <>
bool gemm_nests_in_openmp<float>() {
#if defined(MOEX_WITH_DNNL)
  return true;  // oneDNN's OpenMP gemm uses one thread when called inside a parallel region
#else
  return false;
#endif
}

template <>
bool gemm_nests_in_openmp<double>() {
  return false;
}

void set_blas_threads(int num_threads) {
  MOEX_CHECK(num_threads >= 1, "set_blas_threads: num_threads must be >= 1, got ", num_threads);
  openblas_set_num_threads(num_threads);
#if defined(MOEX_WITH_DNNL)
  // oneDNN threads through OpenMP, so this also caps the OpenMP kernels (what an MPI rank wants).
  omp_set_num_threads(num_threads);
#endif
}

}  // namespace moex::cpu
