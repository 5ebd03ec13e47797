// ops::split_qkv and ops::merge_qkv_backward on the CPU: the split puts each row's columns where
// attention reads them (v copied, q and k rotated as ops::rope does), the merge is the split's
// adjoint (<split(x), y> = <x, merge(y)>, which is what a backward must be), with and without
// RoPE and at start_pos > 0; mismatched shapes are refused by name. The CUDA kernels:
// tests/gpu/kernels/rope_test.cpp (the same bits as the unfused kernels).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_kernel_checks.h"
#include "gradcheck.h"
#include "ops/rope.h"

namespace moex {
namespace {

Tensor random_tensor(const Shape& shape, uint64_t seed) {
  return testing::random_tensor(shape, seed, -2.0, 2.0);
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    s += static_cast<double>(a.data<float>()[i]) * b.data<float>()[i];
  return s;
}

TEST(OpsRopeQkv, SplitPlacesColumnsAndMergeIsItsAdjoint) {
  const int64_t B = 2, T = 5, H = 4, Hkv = 2, Dh = 6, Q = H * Dh, K = Hkv * Dh;
  for (const double theta : {0.0, 10000.0}) {
    for (const int64_t start : {int64_t{0}, int64_t{3}}) {
      const std::string tag = "theta " + std::to_string(theta) + " start " + std::to_string(start);
      const Tensor x = random_tensor({B * T, Q + 2 * K}, 1);
      const Tensor q = Tensor::empty({B, T, H, Dh}, DType::kF32);
      const Tensor k = Tensor::empty({B, T, Hkv, Dh}, DType::kF32);
      const Tensor v = Tensor::empty({B, T, Hkv, Dh}, DType::kF32);
      ops::split_qkv(x, start, theta, q, k, v);
      // v is the last K columns; q (k) is its columns rotated by ops::rope.
      const Tensor q_cols = Tensor::empty(q.shape(), DType::kF32);
      for (int64_t r = 0; r < B * T; ++r) {
        const float* row = x.data<float>() + r * (Q + 2 * K);
        for (int64_t j = 0; j < K; ++j) ASSERT_EQ(v.data<float>()[r * K + j], row[Q + K + j]);
        std::copy(row, row + Q, q_cols.data<float>() + r * Q);
      }
      if (theta > 0) ops::rope(q_cols, start, theta, q_cols);
      for (int64_t i = 0; i < q.numel(); ++i)
        ASSERT_EQ(q.data<float>()[i], q_cols.data<float>()[i]) << tag;

      const Tensor dq = random_tensor(q.shape(), 2), dk = random_tensor(k.shape(), 3),
                   dv = random_tensor(v.shape(), 4);
      const Tensor dq_before = random_tensor(q.shape(), 2);
      const Tensor dx = random_tensor(x.shape(), 5);  // overwritten whole
      ops::merge_qkv_backward(dq, dk, dv, start, theta, dx);
      const double lhs = dot(q, dq) + dot(k, dk) + dot(v, dv), rhs = dot(x, dx);
      EXPECT_NEAR(lhs, rhs, 1e-5 * std::max(1.0, std::fabs(lhs))) << tag;
      for (int64_t i = 0; i < dq.numel(); ++i)  // the inputs stay as they were
        ASSERT_EQ(dq.data<float>()[i], dq_before.data<float>()[i]) << tag;
    }
  }
}

TEST(OpsRopeQkv, MismatchedShapesAreRefusedByName) {
  const Tensor x = random_tensor({10, 48}, 1);
  const Tensor q = Tensor::empty({2, 5, 4, 6}, DType::kF32);
  const Tensor k = Tensor::empty({2, 5, 2, 6}, DType::kF32);
  const Tensor wrong_v = Tensor::empty({2, 5, 1, 6}, DType::kF32);
  testing::expect_error_naming([&] { ops::split_qkv(x, 0, 1e4, q, k, wrong_v); },
                               {"split_qkv", "v "});
  const Tensor wide = random_tensor({10, 50}, 1);
  testing::expect_error_naming([&] { ops::merge_qkv_backward(q, k, k, 0, 1e4, wide); },
                               {"merge_qkv_backward", "qkv "});
}

}  // namespace
}  // namespace moex
