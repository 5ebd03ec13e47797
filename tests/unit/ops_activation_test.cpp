// ops::activation_backward's recompute of a on the CPU: with `a` given (apart, or da itself, as
// the dense FFN layer passes it), a gets exactly what ops::activation writes and dh is the same as
// without it; a wrong shape for a is refused by name. The CUDA twin: tests/gpu/moe_cuda_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_kernel_checks.h"
#include "gradcheck.h"
#include "ops/activation.h"

namespace moex {
namespace {

Tensor filled(const Shape& shape, uint64_t seed) {
  return testing::random_tensor(shape, seed, -3.0, 3.0);
}

bool same_bits(const Tensor& x, const Tensor& y) {
  return x.numel() == y.numel() &&
         std::memcmp(x.raw_data(), y.raw_data(), static_cast<size_t>(x.nbytes())) == 0;
}

TEST(OpsActivation, BackwardRecomputesTheForwardsActivationsExactly) {
  const int64_t rows = 13, f = 24;
  for (const ops::Activation kind :
       {ops::Activation::kGeluTanh, ops::Activation::kGeluExact, ops::Activation::kSwiGLU}) {
    const std::string name = "kind " + std::to_string(static_cast<int>(kind));
    const int64_t f1 = kind == ops::Activation::kSwiGLU ? 2 * f : f;
    const Tensor h = filled({rows, f1}, 11), da = filled({rows, f}, 12);
    Tensor a_fwd = Tensor::empty({rows, f}, DType::kF32);
    ops::activation(kind, h, a_fwd);
    Tensor dh = Tensor::empty({rows, f1}, DType::kF32);
    ops::activation_backward(kind, h, da, dh);
    // a apart from da.
    Tensor dh_apart = Tensor::empty({rows, f1}, DType::kF32);
    Tensor a_apart = Tensor::empty({rows, f}, DType::kF32);
    ops::activation_backward(kind, h, da, dh_apart, a_apart);
    EXPECT_TRUE(same_bits(a_apart, a_fwd)) << name;
    EXPECT_TRUE(same_bits(dh_apart, dh)) << name;
    // a written over da itself.
    Tensor da_then_a = da.clone();
    Tensor dh_over = Tensor::empty({rows, f1}, DType::kF32);
    ops::activation_backward(kind, h, da_then_a, dh_over, da_then_a);
    EXPECT_TRUE(same_bits(da_then_a, a_fwd)) << name;
    EXPECT_TRUE(same_bits(dh_over, dh)) << name << ": dh must come from da before a replaces it";
  }
}

TEST(OpsActivation, RefusesAnActivationsBufferOfTheWrongSize) {
  const Tensor h = filled({4, 16}, 1), da = filled({4, 8}, 2);
  Tensor dh = Tensor::empty({4, 16}, DType::kF32), a = Tensor::empty({4, 7}, DType::kF32);
  testing::expect_error_naming(
      [&] { ops::activation_backward(ops::Activation::kSwiGLU, h, da, dh, a); },
      {"activation_backward", "a"});
}

}  // namespace
}  // namespace moex
