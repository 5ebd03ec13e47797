// distill_loss_rows against cpu/distill_loss.h row by row: small, odd and 32k vocabularies,
// temperatures below and above 1, ignored rows (loss 0, gradient untouched), the gradient added
// to a bf16 buffer that already holds another term's gradient, and the loss without a gradient.
#include "cpu/distill_loss.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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
                            ignore, c.tau, grad_scale, nullptr, loss.as<float>(), dl.ptr,
                            ctx.stream());
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
                            ignore, c.tau, grad_scale, nullptr, loss2.as<float>(), nullptr,
                            ctx.stream());
    EXPECT_TRUE(kt::same_bits(download<float>(loss2.ptr, c.rows), loss_gpu)) << tag;
  }
}

// The vocabulary split over ranks (tensor parallelism): each slice's (max, sum) stats from
// distill_stats_rows, combined on the host into the rows' log-sum-exps, then distill_loss_rows on
// each slice with them: the slices' losses add up to the whole row's CPU loss and each slice's
// gradient is the CPU gradient's columns. Slices of unequal width, a slice of one column.
TEST_F(DistillLossTest, VocabularySlicesMatchTheWholeRowOnCpu) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t rows, vocab;
    std::vector<int64_t> cuts;  // slice starts after 0
    float tau;
  };
  const Case cases[] = {
      {5, 1000, {500}, 2.0f}, {3, 37, {20, 36}, 0.5f}, {4, 32000, {8000, 16000, 24000}, 1.0f}};
  const int32_t ignore = -100;
  uint64_t seed = 950;
  for (const Case& c : cases) {
    const std::string tag =
        "vocab " + std::to_string(c.vocab) + " slices " + std::to_string(c.cuts.size() + 1);
    const auto student = rand_vec(c.rows * c.vocab, seed += 3, -8.0f, 8.0f);
    const auto teacher = rand_vec(c.rows * c.vocab, seed + 1, -8.0f, 8.0f);
    std::vector<int32_t> targets(c.rows);
    for (int64_t r = 0; r < c.rows; ++r) targets[r] = r % 3 == 1 ? ignore : 0;
    const float grad_scale = 0.37f;
    std::vector<float> loss_ref(c.rows, 0.0f), dl_ref(c.rows * c.vocab, 0.0f);
    for (int64_t r = 0; r < c.rows; ++r)
      if (targets[r] != ignore)
        loss_ref[r] =
            cpu::distill_loss_row<float>(student.data() + r * c.vocab, teacher.data() + r * c.vocab,
                                         c.vocab, c.tau, grad_scale, dl_ref.data() + r * c.vocab);
    std::vector<int64_t> starts = {0};
    starts.insert(starts.end(), c.cuts.begin(), c.cuts.end());
    starts.push_back(c.vocab);
    const size_t slices = starts.size() - 1;
    auto columns = [&](const std::vector<float>& full, size_t s) {
      std::vector<float> out;
      for (int64_t r = 0; r < c.rows; ++r)
        out.insert(out.end(), full.begin() + r * c.vocab + starts[s],
                   full.begin() + r * c.vocab + starts[s + 1]);
      return out;
    };
    // Pass 1: every slice's stats; the rows' log-sum-exps in double.
    std::vector<std::vector<float>> stats(slices);
    for (size_t s = 0; s < slices; ++s) {
      DevBuf ds = upload(columns(student, s)), dtch = upload(columns(teacher, s));
      DevBuf st(c.rows * 4 * 4);
      cuda::distill_stats_rows(ds.as<float>(), dtch.as<float>(), c.rows, starts[s + 1] - starts[s],
                               c.tau, st.as<float>(), ctx.stream());
      stats[s] = download<float>(st.ptr, c.rows * 4);
    }
    std::vector<double> lse(2 * c.rows);
    for (int64_t r = 0; r < c.rows; ++r)
      for (int side = 0; side < 2; ++side) {
        double mx = -INFINITY, sum = 0;
        for (size_t s = 0; s < slices; ++s) mx = std::max<double>(mx, stats[s][4 * r + 2 * side]);
        for (size_t s = 0; s < slices; ++s)
          sum += stats[s][4 * r + 2 * side + 1] * std::exp(stats[s][4 * r + 2 * side] - mx);
        lse[2 * r + side] = mx + std::log(sum);
      }
    // Pass 2: each slice's terms with the whole rows' log-sum-exps.
    DevBuf dlse = upload(lse), dt = upload(targets);
    std::vector<float> loss_sum(c.rows, 0.0f);
    for (size_t s = 0; s < slices; ++s) {
      const int64_t width = starts[s + 1] - starts[s];
      DevBuf ds = upload(columns(student, s)), dtch = upload(columns(teacher, s));
      DevBuf loss(c.rows * 4), dl = upload(kt::to_bf16(std::vector<float>(c.rows * width, 0.0f)));
      cuda::distill_loss_rows(ds.as<float>(), dtch.as<float>(), dt.as<int32_t>(), c.rows, width,
                              ignore, c.tau, grad_scale, dlse.as<double>(), loss.as<float>(),
                              dl.ptr, ctx.stream());
      const auto part = download<float>(loss.ptr, c.rows);
      for (int64_t r = 0; r < c.rows; ++r) loss_sum[r] += part[r];
      EXPECT_LT(rel_l2(download_bf16(dl.ptr, c.rows * width), columns(dl_ref, s)), 1e-2)
          << tag << " slice " << s;
    }
    EXPECT_LT(rel_l2(loss_sum, loss_ref), 1e-4) << tag;
  }
}

}  // namespace
}  // namespace moex
