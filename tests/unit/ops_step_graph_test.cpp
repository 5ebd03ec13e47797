// The serving step's host-side pieces on the CPU: ops::argmax_rows against a naive scan (ties to
// the lowest index, as the host sampler's std::max_element), its argument checks, staging tensors
// and copy_async as plain host copies, and StepGraph refusing a CPU device with a clear error
// (CUDA graphs exist on GPUs only; tests/gpu/model_cuda_test.cpp covers them there).
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "cpu_kernel_checks.h"
#include "ops/argmax.h"
#include "ops/step_graph.h"

namespace moex {
namespace {

TEST(OpsArgmax, EqualsANaiveScanWithTiesToTheLowestIndex) {
  const int64_t rows = 5, cols = 97;
  Tensor x = Tensor::empty(Shape{rows, cols}, DType::kF32);
  float* p = x.data<float>();
  for (int64_t i = 0; i < rows * cols; ++i)
    p[i] = 2.0f * philox_uniform(3, 1, static_cast<uint64_t>(i)) - 1.0f;
  p[1 * cols + 40] = p[1 * cols + 7] = 5.0f;                       // a tie: 7 wins
  for (int64_t c = 0; c < cols; ++c) p[2 * cols + c] = -INFINITY;  // no finite value: 0
  p[3 * cols + cols - 1] = 5.0f;                                   // the last column
  Tensor out = Tensor::empty(Shape{rows}, DType::kI32);
  ops::argmax_rows(x, out);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t best = 0;
    for (int64_t c = 1; c < cols; ++c)
      if (p[r * cols + c] > p[r * cols + best]) best = c;
    EXPECT_EQ(out.data<int32_t>()[r], best) << "row " << r;
  }
  EXPECT_EQ(out.data<int32_t>()[1], 7);
  EXPECT_EQ(out.data<int32_t>()[2], 0);
  EXPECT_EQ(out.data<int32_t>()[3], cols - 1);
}

TEST(OpsArgmax, BadArgumentsNameTheArgument) {
  const Tensor x = Tensor::zeros(Shape{2, 3}, DType::kF32);
  testing::expect_error_naming([&] { ops::argmax_rows(x, Tensor::empty(Shape{3}, DType::kI32)); },
                               {"argmax_rows"});
  testing::expect_error_naming([&] { ops::argmax_rows(x, Tensor::empty(Shape{2}, DType::kF32)); },
                               {"out"});
  EXPECT_NO_THROW(ops::argmax_rows(x, Tensor::empty(Shape{2}, DType::kI32)));
}

TEST(OpsStepGraph, StagingAndAsyncCopiesAreHostCopiesOnTheCpu) {
  Tensor staging = ops::staging_tensor(Shape{4}, DType::kI32, Device::cpu());
  Tensor dst = Tensor::zeros(Shape{4}, DType::kI32);
  for (int i = 0; i < 4; ++i) staging.data<int32_t>()[i] = 10 + i;
  ops::copy_async(staging, dst);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(dst.data<int32_t>()[i], 10 + i);
  testing::expect_error_naming(
      [&] { ops::copy_async(staging, Tensor::zeros(Shape{3}, DType::kI32)); }, {"copy_async"});
}

TEST(OpsStepGraph, ACpuDeviceIsAClearError) {
  testing::expect_error_naming([] { ops::StepGraph graph(Device::cpu()); },
                               {"CUDA graphs need a GPU"});
}

}  // namespace
}  // namespace moex
