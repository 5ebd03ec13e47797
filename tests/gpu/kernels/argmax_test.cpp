// Greedy decoding's device argmax against its CPU twin: random rows of the LM head's width, rows
// whose maximum appears twice (the lower index must win, as on the host), a row of -inf, and a
// row whose maximum is its last element. The output starts poisoned.
#include "cpu/argmax.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "cuda/argmax.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

class ArgmaxTest : public kt::GpuKernel {};

TEST_F(ArgmaxTest, MatchesCpuWithTiesToTheLowestIndex) {
  cuda::CudaContext ctx;
  const int64_t rows = 7, cols = 32000;
  std::vector<float> x = kt::rand_vec(rows * cols, 71, -4, 4);
  x[1 * cols + 9000] = x[1 * cols + 31000] = 9.0f;  // a tie: 9000 wins
  x[2 * cols + 17] = x[2 * cols + 16] = 9.5f;       // adjacent tie: 16 wins
  for (int64_t c = 0; c < cols; ++c) x[3 * cols + c] = -INFINITY;
  x[4 * cols + cols - 1] = 10.0f;
  x[5 * cols + 0] = 10.0f;
  std::vector<int32_t> want(rows);
  cpu::argmax_rows(x.data(), rows, cols, want.data());
  ASSERT_EQ(want[1], 9000);
  ASSERT_EQ(want[2], 16);
  ASSERT_EQ(want[3], 0);
  kt::DevBuf dx = kt::upload(x), out(rows * 4);
  cuda::argmax_rows_f32(dx.as<float>(), rows, cols, out.as<int32_t>(), ctx.stream());
  EXPECT_EQ(kt::download<int32_t>(out.ptr, rows), want);
}

}  // namespace
}  // namespace moex
