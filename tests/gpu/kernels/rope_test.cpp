// RoPE kernels against cpu/rope.h in fp32 on the same bf16-rounded inputs: vectorized (head_dim
// % 16 == 0) and scalar head dims, start_pos > 0, other theta, in place (y aliases x), and
// backward as the inverse rotation.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cpu/rope.h"
#include "cuda/rope.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::download_bf16;
using kt::rand_vec;
using kt::rel_l2;
using kt::round_bf16;
using kt::to_bf16;
using kt::upload;

class RopeTest : public kt::GpuKernel {};

TEST_F(RopeTest, ForwardBackwardMatchCpu) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t batch, seq, heads, head_dim, start;
    double theta;
  };
  const Case cases[] = {{2, 5, 3, 16, 0, 10000.0},    {1, 7, 2, 24, 0, 10000.0},
                        {2, 33, 4, 128, 0, 10000.0},  {1, 3, 1, 2, 5, 10000.0},
                        {3, 17, 5, 64, 100, 500000.0}, {1, 1000, 2, 96, 3000, 1e6},
                        {2, 9, 40, 10, 1, 10000.0},   {1, 4, 1, 8, 0, 10000.0}};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    const std::string tag = "b " + std::to_string(c.batch) + " t " + std::to_string(c.seq) +
                            " h " + std::to_string(c.heads) + " d " +
                            std::to_string(c.head_dim) + " start " + std::to_string(c.start);
    const int64_t n = c.batch * c.seq * c.heads * c.head_dim;
    const auto x = round_bf16(rand_vec(n, seed += 7, -2, 2));
    cpu::RopeShape shape{c.batch, c.seq, c.heads, c.head_dim, c.start, c.theta};
    std::vector<float> y_ref(n), dx_ref(n);
    cpu::rope_forward<float>(x.data(), shape, y_ref.data());
    cpu::rope_backward<float>(x.data(), shape, dx_ref.data());
    cuda::RopeParams p{c.batch, c.seq, c.heads, c.head_dim, c.start, c.theta};
    DevBuf dx_in = upload(to_bf16(x)), y(n * 2), dx(n * 2);
    cuda::rope_forward_bf16(dx_in.ptr, y.ptr, p, ctx.stream());
    cuda::rope_backward_bf16(dx_in.ptr, dx.ptr, p, ctx.stream());
    // One bf16 rounding of values of size ~1: ~1.5e-3 relative L2.
    EXPECT_LT(rel_l2(download_bf16(y.ptr, n), y_ref), 4e-3) << "forward " << tag;
    EXPECT_LT(rel_l2(download_bf16(dx.ptr, n), dx_ref), 4e-3) << "backward " << tag;
    // In place: y aliases x.
    DevBuf inplace = upload(to_bf16(x));
    cuda::rope_forward_bf16(inplace.ptr, inplace.ptr, p, ctx.stream());
    EXPECT_LT(rel_l2(download_bf16(inplace.ptr, n), y_ref), 4e-3) << "in place " << tag;
    // Backward undoes forward (up to the two bf16 roundings).
    cuda::rope_backward_bf16(inplace.ptr, inplace.ptr, p, ctx.stream());
    EXPECT_LT(rel_l2(download_bf16(inplace.ptr, n), x), 8e-3) << "round trip " << tag;
  }
}

TEST_F(RopeTest, Bandwidth) {
  cuda::CudaContext ctx;
  const auto s = ctx.stream();
  for (int64_t heads : {8, 16}) {  // rows 8192 x dim 1024 / 2048 as [4, 2048, heads, 128]
    cuda::RopeParams p{4, 2048, heads, 128, 0, 10000.0};
    const int64_t n = 4 * 2048 * heads * 128;
    DevBuf x = kt::dev_rand_bf16(n, 41), y(n * 2);
    const std::string what = "rope fwd 8192x" + std::to_string(heads * 128) + " (hd 128)";
    kt::report_bandwidth(what.c_str(), 4.0 * n, s,
                         [&] { cuda::rope_forward_bf16(x.ptr, y.ptr, p, s); });
    const std::string what_b = "rope bwd in place 8192x" + std::to_string(heads * 128);
    kt::report_bandwidth(what_b.c_str(), 4.0 * n, s,
                         [&] { cuda::rope_backward_bf16(y.ptr, y.ptr, p, s); });
  }
}

}  // namespace
}  // namespace moex
