// cross_entropy_rows against cpu/cross_entropy.h row by row (a one-row call returns that row's loss
// and, with dloss = grad_scale, its gradient grad_scale * (softmax - onehot)): tiny, odd and 32k
// vocabularies, ignored rows, with and without the gradient.
#include "cpu/cross_entropy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/cross_entropy.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::download;
using kt::download_bf16;
using kt::rand_vec;
using kt::rel_l2;
using kt::upload;

class CrossEntropyTest : public kt::GpuKernel {};

TEST_F(CrossEntropyTest, RowsMatchCpu) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t rows, vocab;
    float spread;  // logits in [-spread, spread]
  };
  const Case cases[] = {{1, 64, 4.0f},   {3, 64, 30.0f},   {17, 37, 8.0f},  {5, 1000, 8.0f},
                        {1000, 64, 6.0f}, {9, 32000, 12.0f}, {4, 32001, 8.0f}, {2, 1, 1.0f}};
  const int32_t ignore = cpu::kIgnoreIndex;
  uint64_t seed = 700;
  for (const Case& c : cases) {
    const std::string tag = "rows " + std::to_string(c.rows) + " vocab " + std::to_string(c.vocab);
    const auto logits = rand_vec(c.rows * c.vocab, seed += 3, -c.spread, c.spread);
    std::vector<int32_t> targets(c.rows);
    const auto pick = rand_vec(c.rows, seed + 1, 0.0f, 1.0f);
    for (int64_t r = 0; r < c.rows; ++r) {
      targets[r] = r % 4 == 2 ? ignore
                              : std::min<int32_t>(static_cast<int32_t>(pick[r] * c.vocab),
                                                  static_cast<int32_t>(c.vocab - 1));
    }
    const float grad_scale = 0.37f;
    std::vector<float> loss_ref(c.rows), dl_ref(c.rows * c.vocab);
    for (int64_t r = 0; r < c.rows; ++r) {
      loss_ref[r] = cpu::cross_entropy_forward_backward<float>(
          logits.data() + r * c.vocab, &targets[r], 1, c.vocab, ignore, grad_scale,
          dl_ref.data() + r * c.vocab);
    }
    DevBuf dlog = upload(logits), dt = upload(targets);
    DevBuf loss(c.rows * 4), dl(c.rows * c.vocab * 2);
    cuda::cross_entropy_rows(dlog.as<float>(), dt.as<int32_t>(), c.rows, c.vocab, ignore,
                             grad_scale, loss.as<float>(), dl.ptr, ctx.stream());
    const auto loss_gpu = download<float>(loss.ptr, c.rows);
    EXPECT_LT(rel_l2(loss_gpu, loss_ref), 1e-5) << tag;
    for (int64_t r = 0; r < c.rows; ++r) {
      if (targets[r] == ignore) EXPECT_EQ(loss_gpu[r], 0.0f) << tag << " row " << r;
    }
    const auto dl_gpu = download_bf16(dl.ptr, c.rows * c.vocab);
    // bf16 gradient: one rounding, ~1.5e-3 relative L2.
    EXPECT_LT(rel_l2(dl_gpu, dl_ref), 4e-3) << tag;
    for (int64_t r = 0; r < c.rows; ++r) {
      if (targets[r] != ignore) continue;
      for (int64_t k = 0; k < c.vocab; ++k)
        ASSERT_EQ(dl_gpu[r * c.vocab + k], 0.0f) << tag << " ignored row " << r;
    }
    // Loss only: same losses, the gradient buffer untouched.
    DevBuf loss2(c.rows * 4);
    cuda::cross_entropy_rows(dlog.as<float>(), dt.as<int32_t>(), c.rows, c.vocab, ignore,
                             grad_scale, loss2.as<float>(), nullptr, ctx.stream());
    EXPECT_TRUE(kt::same_bits(download<float>(loss2.ptr, c.rows), loss_gpu)) << tag;
  }
}

// Tensor parallelism's pieces: a vocabulary of 3 parts (one odd-sized, one holding no target of
// some rows), each part's stats and gradient against the CPU twins on the same columns; the parts'
// stats combined give the whole row's loss of cross_entropy_rows.
TEST_F(CrossEntropyTest, VocabularyPartsMatchCpu) {
  cuda::CudaContext ctx;
  const int64_t rows = 37;
  const int64_t parts[] = {0, 1200, 2401, 4000};  // part p holds columns [parts[p], parts[p + 1])
  const int64_t vocab = parts[3];
  const int32_t ignore = cpu::kIgnoreIndex;
  const auto logits = rand_vec(rows * vocab, 901, -9.0f, 9.0f);
  std::vector<int32_t> targets(rows);
  for (int64_t r = 0; r < rows; ++r)
    targets[r] = r % 5 == 3 ? ignore : static_cast<int32_t>((r * 977) % vocab);
  std::vector<float> loss_whole(rows);
  {
    DevBuf dl = upload(logits), dt = upload(targets), loss(rows * 4);
    cuda::cross_entropy_rows(dl.as<float>(), dt.as<int32_t>(), rows, vocab, ignore, 1.0f,
                             loss.as<float>(), nullptr, ctx.stream());
    loss_whole = download<float>(loss.ptr, rows);
  }
  DevBuf dt = upload(targets);
  std::vector<std::vector<float>> stats(3), part_logits(3);
  for (int p = 0; p < 3; ++p) {
    const int64_t begin = parts[p], vl = parts[p + 1] - parts[p];
    for (int64_t r = 0; r < rows; ++r)
      part_logits[p].insert(part_logits[p].end(), logits.begin() + r * vocab + begin,
                            logits.begin() + r * vocab + begin + vl);
    std::vector<float> want(rows * 3);
    cpu::cross_entropy_partial_stats(part_logits[p].data(), targets.data(), rows, vl, begin, ignore,
                                     want.data());
    DevBuf dl = upload(part_logits[p]), st(rows * 3 * 4);
    cuda::cross_entropy_partial_stats(dl.as<float>(), dt.as<int32_t>(), rows, vl, begin, ignore,
                                      st.as<float>(), ctx.stream());
    stats[p] = download<float>(st.ptr, rows * 3);
    EXPECT_LT(rel_l2(stats[p], want), 1e-5) << "part " << p;
  }
  // Combined as the LM head does: the whole row's logsumexp and loss.
  std::vector<float> lse(rows, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == ignore) continue;
    float mx = stats[0][3 * r];
    for (int p = 1; p < 3; ++p) mx = std::max(mx, stats[p][3 * r]);
    double sum = 0, target = 0;
    for (int p = 0; p < 3; ++p) {
      sum += stats[p][3 * r + 1] * std::exp(static_cast<double>(stats[p][3 * r]) - mx);
      target += stats[p][3 * r + 2];
    }
    lse[r] = static_cast<float>(mx + std::log(sum));
    EXPECT_NEAR(lse[r] - target, loss_whole[r], 1e-4 * std::abs(loss_whole[r]) + 1e-5)
        << "row " << r;
  }
  DevBuf dlse = upload(lse);
  const float grad_scale = 0.29f;
  for (int p = 0; p < 3; ++p) {
    const int64_t begin = parts[p], vl = parts[p + 1] - parts[p];
    std::vector<float> want(rows * vl);
    cpu::cross_entropy_partial_grad(part_logits[p].data(), targets.data(), lse.data(), rows, vl,
                                    begin, ignore, grad_scale, want.data());
    DevBuf dl = upload(part_logits[p]), dg(rows * vl * 2);
    cuda::cross_entropy_partial_grad(dl.as<float>(), dt.as<int32_t>(), dlse.as<float>(), rows, vl,
                                     begin, ignore, grad_scale, dg.ptr, ctx.stream());
    EXPECT_LT(rel_l2(download_bf16(dg.ptr, rows * vl), want), 4e-3) << "part " << p;
  }
}

TEST_F(CrossEntropyTest, Bandwidth) {
  cuda::CudaContext ctx;
  const auto s = ctx.stream();
  const int64_t rows = 4096, vocab = 32000;
  DevBuf logits = kt::dev_rand_f32(rows * vocab, 51, -8, 8);
  std::vector<int32_t> t(rows);
  for (int64_t r = 0; r < rows; ++r) t[r] = static_cast<int32_t>((r * 7919) % vocab);
  DevBuf targets = upload(t), loss(rows * 4), dl(rows * vocab * 2);
  kt::report_bandwidth("cross_entropy 4096x32000 loss + bf16 grad", 6.0 * rows * vocab, s, [&] {
    cuda::cross_entropy_rows(logits.as<float>(), targets.as<int32_t>(), rows, vocab, -100, 1.0f,
                             loss.as<float>(), dl.ptr, s);
  });
}

}  // namespace
}  // namespace moex
