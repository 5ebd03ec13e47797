// Matrix products on the CPU through BLAS: oneDNN for fp32 when found, else OpenBLAS; fp64 through
// OpenBLAS (docs/cpu-blas.md says why).
// Row-major: C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
#pragma once

#include <cstdint>

namespace moex::cpu {

// lda/ldb/ldc are row strides in elements; pass 0 for the packed default (row length of the stored
// matrix).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Packed convenience form: A is [M,K] (or [K,M] if trans_a), B is [K,N] (or [N,K] if trans_b), C is
// [M,N].
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          const T* b, T beta, T* c) {
  gemm<T>(trans_a, trans_b, m, n, k, alpha, a, 0, b, 0, beta, c, 0);
}

// True when gemm<T> called inside an OpenMP parallel region runs on the calling thread alone
// (oneDNN fp32), so callers may run independent products in parallel (one per head, per expert).
// False for OpenBLAS, whose own pthread pool should not be driven from an OpenMP team.
template <typename T>
bool gemm_nests_in_openmp();

// Threads BLAS may use (1 when MPI ranks outnumber cores).
void set_blas_threads(int num_threads);

}  // namespace moex::cpu
