// distill_loss_rows against cpu/distill_loss.h row by row: small, odd and 32k vocabularies,
// temperatures below and above 1, ignored rows (loss 0, gradient untouched), the gradient added
// to a bf16 buffer that already holds another term's gradient, and the loss without a gradient.
#include "cpu/distill_loss.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/distill_loss.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::download;
using kt::download_bf16;
using kt::rand_vec;
using kt::rel_l2;
using kt::upload;

class DistillLossTest : public kt::GpuKernel {};

TEST_F(DistillLossTest, RowsMatchCpu) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t rows, vocab;
    float spread, tau;
  };
  const Case cases[] = {{1, 64, 4.0f, 1.0f},   {3, 64, 30.0f, 2.0f},    {17, 37, 8.0f, 0.5f},
                        {5, 1000, 8.0f, 4.0f}, {9, 32000, 12.0f, 1.0f}, {4, 32001, 8.0f, 2.0f},
                        {2, 1, 1.0f, 1.0f}};
  const int32_t ignore = -100;
  uint64_t seed = 900;
  for (const Case& c : cases) {
    const std::string tag = "rows " + std::to_string(c.rows) + " vocab " + std::to_string(c.vocab) +
                            " tau " + std::to_string(c.tau);
    const auto student = rand_vec(c.rows * c.vocab, seed += 3, -c.spread, c.spread);
    const auto teacher = rand_vec(c.rows * c.vocab, seed + 1, -c.spread, c.spread);
    // The buffer holds another gradient already; bf16-rounded so both sides start equal.
    const auto before = kt::round_bf16(rand_vec(c.rows * c.vocab, seed + 2, -0.01f, 0.01f));
    std::vector<int32_t> targets(c.rows);
    for (int64_t r = 0; r < c.rows; ++r) targets[r] = r % 4 == 2 ? ignore : 0;
    const float grad_scale = 0.37f;
    std::vector<float> loss_ref(c.rows, 0.0f), dl_ref = before;
    for (int64_t r = 0; r < c.rows; ++r) {
      if (targets[r] == ignore) continue;
      loss_ref[r] =
          cpu::distill_loss_row<float>(student.data() + r * c.vocab, teacher.data() + r * c.vocab,
                                       c.vocab, c.tau, grad_scale, dl_ref.data() + r * c.vocab);
    }
    DevBuf ds = upload(student), dtch = upload(teacher), dt = upload(targets);
    DevBuf loss(c.rows * 4), dl = upload(kt::to_bf16(before));
    cuda::distill_loss_rows(ds.as<float>(), dtch.as<float>(), dt.as<int32_t>(), c.rows, c.vocab,
                            ignore, c.tau, grad_scale, loss.as<float>(), dl.ptr, ctx.stream());
    const auto loss_gpu = download<float>(loss.ptr, c.rows);
    EXPECT_LT(rel_l2(loss_gpu, loss_ref), 1e-4) << tag;
    const auto dl_gpu = download_bf16(dl.ptr, c.rows * c.vocab);
    EXPECT_LT(rel_l2(dl_gpu, dl_ref), 1e-2) << tag;  // bf16 output: one rounding of the sum
    for (int64_t r = 0; r < c.rows; ++r) {
      if (targets[r] != ignore) continue;
      EXPECT_EQ(loss_gpu[r], 0.0f) << tag << " row " << r;
      for (int64_t k = 0; k < c.vocab; ++k)
        ASSERT_EQ(dl_gpu[r * c.vocab + k], before[r * c.vocab + k]) << tag << " ignored row " << r;
    }
    DevBuf loss2(c.rows * 4);
    cuda::distill_loss_rows(ds.as<float>(), dtch.as<float>(), dt.as<int32_t>(), c.rows, c.vocab,
                            ignore, c.tau, grad_scale, loss2.as<float>(), nullptr, ctx.stream());
    EXPECT_TRUE(kt::same_bits(download<float>(loss2.ptr, c.rows), loss_gpu)) << tag;
  }
}

}  // namespace
}  // namespace moex
