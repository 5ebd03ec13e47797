// RoPE kernels against cpu/rope.h in fp32 on the same bf16-rounded inputs: vectorized (head_dim
// % 16 == 0) and scalar head dims, start_pos > 0, other theta, in place (y aliases x), and
// backward as the inverse rotation.
#include "cpu/rope.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

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
  const Case cases[] = {{2, 5, 3, 16, 0, 10000.0},     {1, 7, 2, 24, 0, 10000.0},
                        {2, 33, 4, 128, 0, 10000.0},   {1, 3, 1, 2, 5, 10000.0},
                        {3, 17, 5, 64, 100, 500000.0}, {1, 1000, 2, 96, 3000, 1e6},
                        {2, 9, 40, 10, 1, 10000.0},    {1, 4, 1, 8, 0, 10000.0}};
  uint64_t seed = 500;
  for (const Case& c : cases) {
    const std::string tag = "b " + std::to_string(c.batch) + " t " + std::to_string(c.seq) + " h " +
                            std::to_string(c.heads) + " d " + std::to_string(c.head_dim) +
                            " start " + std::to_string(c.start);
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

// The training split and its backward merge against the unfused kernels (host column copies,
// then rope_forward_bf16 / rope_backward_bf16): the same bits, vectorized and scalar head dims,
// start_pos > 0, several sequences, and theta 0 (copies only). Outputs start poisoned.
TEST_F(RopeTest, QkvSplitAndMergeEqualTheUnfusedKernels) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t batch, seq, heads, kv_heads, head_dim, start;
    double theta;
  };
  const Case cases[] = {{2, 9, 4, 2, 64, 0, 10000.0},
                        {1, 5, 3, 1, 10, 3, 500000.0},
                        {3, 4, 2, 2, 16, 0, 0.0},
                        {1, 33, 8, 2, 128, 7, 1e6}};
  uint64_t seed = 900;
  for (const Case& c : cases) {
    const std::string tag = "h " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
                            " d " + std::to_string(c.head_dim) + " theta " +
                            std::to_string(c.theta);
    const int64_t R = c.batch * c.seq, qw = c.heads * c.head_dim, kw = c.kv_heads * c.head_dim;
    const int64_t fw = qw + 2 * kw;
    const auto qkv = round_bf16(rand_vec(R * fw, seed += 3, -2, 2));
    const auto dq = round_bf16(rand_vec(R * qw, seed += 3, -2, 2));
    const auto dk = round_bf16(rand_vec(R * kw, seed += 3, -2, 2));
    const auto dv = round_bf16(rand_vec(R * kw, seed += 3, -2, 2));
    const std::vector<float> poison_q(R * qw, 7.0f), poison_kv(R * kw, 7.0f),
        poison_fused(R * fw, 7.0f);
    // Split.
    DevBuf dqkv = upload(to_bf16(qkv)), q = upload(to_bf16(poison_q)),
           k = upload(to_bf16(poison_kv)), v = upload(to_bf16(poison_kv));
    cuda::RopeQkvTrainParams p;
    p.rows = R;
    p.seq_len = c.seq;
    p.start_pos = c.start;
    p.q_width = qw;
    p.kv_width = kw;
    p.head_dim = c.head_dim;
    p.theta = c.theta;
    p.qkv = dqkv.ptr;
    p.q = q.ptr;
    p.k = k.ptr;
    p.v = v.ptr;
    cuda::rope_qkv_split_bf16(p, ctx.stream());
    std::vector<float> qh(R * qw), kh(R * kw), vh(R * kw);
    for (int64_t r = 0; r < R; ++r) {
      const float* row = &qkv[r * fw];
      std::copy(row, row + qw, &qh[r * qw]);
      std::copy(row + qw, row + qw + kw, &kh[r * kw]);
      std::copy(row + qw + kw, row + fw, &vh[r * kw]);
    }
    DevBuf rq = upload(to_bf16(qh)), rk = upload(to_bf16(kh));
    cuda::RopeParams rp{c.batch, c.seq, c.heads, c.head_dim, c.start, c.theta};
    cuda::RopeParams rpk{c.batch, c.seq, c.kv_heads, c.head_dim, c.start, c.theta};
    if (c.theta > 0) {
      cuda::rope_forward_bf16(rq.ptr, rq.ptr, rp, ctx.stream());
      cuda::rope_forward_bf16(rk.ptr, rk.ptr, rpk, ctx.stream());
    }
    EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(q.ptr, R * qw),
                              kt::download<uint16_t>(rq.ptr, R * qw)))
        << "split q " << tag;
    EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(k.ptr, R * kw),
                              kt::download<uint16_t>(rk.ptr, R * kw)))
        << "split k " << tag;
    EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(v.ptr, R * kw), to_bf16(vh)))
        << "split v " << tag;
    // Merge: dq and dk rotated back into their columns, dv copied.
    DevBuf gq = upload(to_bf16(dq)), gk = upload(to_bf16(dk)), gv = upload(to_bf16(dv)),
           fused = upload(to_bf16(poison_fused));
    p.qkv = fused.ptr;
    p.q = gq.ptr;
    p.k = gk.ptr;
    p.v = gv.ptr;
    cuda::rope_qkv_merge_backward_bf16(p, ctx.stream());
    DevBuf bq = upload(to_bf16(dq)), bk = upload(to_bf16(dk));
    if (c.theta > 0) {
      cuda::rope_backward_bf16(bq.ptr, bq.ptr, rp, ctx.stream());
      cuda::rope_backward_bf16(bk.ptr, bk.ptr, rpk, ctx.stream());
    }
    const auto want_q = kt::download<uint16_t>(bq.ptr, R * qw);
    const auto want_k = kt::download<uint16_t>(bk.ptr, R * kw);
    const auto want_v = to_bf16(dv);
    std::vector<uint16_t> want(R * fw);
    for (int64_t r = 0; r < R; ++r) {
      std::copy(&want_q[r * qw], &want_q[r * qw] + qw, &want[r * fw]);
      std::copy(&want_k[r * kw], &want_k[r * kw] + kw, &want[r * fw + qw]);
      std::copy(&want_v[r * kw], &want_v[r * kw] + kw, &want[r * fw + qw + kw]);
    }
    EXPECT_TRUE(kt::same_bits(kt::download<uint16_t>(fused.ptr, R * fw), want)) << "merge " << tag;
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
