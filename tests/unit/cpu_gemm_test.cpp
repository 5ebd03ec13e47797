// GEMM wrapper (oneDNN or OpenBLAS for fp32, OpenBLAS for fp64) against a naive double loop in
// every transpose form, with row strides, beta accumulation and an empty inner dimension.
#include <gtest/gtest.h>

#include "cpu/gemm.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::random_vector;
using testing::relative_l2;

// C[m,n] = alpha * op(A) op(B) + beta * C with A stored [rows_a, lda], B stored [rows_b, ldb].
std::vector<double> naive_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                               const std::vector<double>& a, int64_t lda,
                               const std::vector<double>& b, int64_t ldb, double beta,
                               std::vector<double> c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p)
        sum += (ta ? a[p * lda + i] : a[i * lda + p]) * (tb ? b[j * ldb + p] : b[p * ldb + j]);
      c[i * ldc + j] = alpha * sum + beta * c[i * ldc + j];
    }
  return c;
}

TEST(CpuGemm, AllTransposeFormsWithStridesAndBeta) {
  const int64_t m = 13, n = 7, k = 9, pad = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
      const auto a = random_vector<double>((ta ? k : m) * lda, 1);
      const auto b = random_vector<double>((tb ? n : k) * ldb, 2);
      const auto c0 = random_vector<double>(m * ldc, 3);
      const auto expect = naive_gemm(ta, tb, m, n, k, 0.7, a, lda, b, ldb, 0.3, c0, ldc);
      std::vector<double> c = c0;
      cpu::gemm<double>(ta, tb, m, n, k, 0.7, a.data(), lda, b.data(), ldb, 0.3, c.data(), ldc);
      EXPECT_LT(relative_l2(c, expect), 1e-14) << ta << tb;
      const auto af = testing::cast_vector<float>(a), bf = testing::cast_vector<float>(b);
      std::vector<float> cf = testing::cast_vector<float>(c0);
      cpu::gemm<float>(ta, tb, m, n, k, 0.7f, af.data(), lda, bf.data(), ldb, 0.3f, cf.data(), ldc);
      EXPECT_LT(relative_l2(testing::cast_vector<double>(cf), expect), 1e-6) << ta << tb;
    }
}

TEST(CpuGemm, PackedFormAndEmptyInnerDimension) {
  const int64_t m = 5, n = 6, k = 4;
  const auto a = random_vector<double>(m * k, 4), b = random_vector<double>(n * k, 5);
  const auto expect =
      naive_gemm(false, true, m, n, k, 1.0, a, k, b, k, 0.0, std::vector<double>(m * n, 0.0), n);
  const auto af = testing::cast_vector<float>(a), bf = testing::cast_vector<float>(b);
  std::vector<float> cf(m * n, 123.0f);  // beta = 0 must overwrite, not scale, what is there
  cpu::gemm<float>(false, true, m, n, k, 1.0f, af.data(), bf.data(), 0.0f, cf.data());
  EXPECT_LT(relative_l2(testing::cast_vector<double>(cf), expect), 1e-6);
  // k = 0: C = beta * C.
  std::vector<float> c2(m * n, 2.0f);
  cpu::gemm<float>(false, false, m, n, 0, 1.0f, af.data(), bf.data(), 0.5f, c2.data());
  for (float v : c2) EXPECT_EQ(v, 1.0f);
}

TEST(CpuGemm, BadSizesRaise) {
  std::vector<float> x(4);
  testing::expect_error_naming(
      [&] { cpu::gemm<float>(false, false, -1, 2, 2, 1.0f, x.data(), x.data(), 0.0f, x.data()); },
      {"m=-1"});
}

}  // namespace
}  // namespace moex
