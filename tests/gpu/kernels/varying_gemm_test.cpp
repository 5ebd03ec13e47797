// VaryingSizeGemm (cuda/varying_gemm.h) against cpu::gemm: every transpose pair, a changing m
// and a changing k through several sizes of one band and of different bands, bf16 and fp32 C,
// beta 0 (poisoned C) and beta 1 (C += A B), strided batches, and operands 16-byte but not
// 256-byte aligned. The kernel is chosen once per band: later sizes of the band ask cuBLAS for
// nothing.
#include "cuda/varying_gemm.h"

#include <vector>

#include "cpu/gemm.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;

class VaryingGemmTest : public kt::GpuKernel {};

// Runs one GEMM of `s` (packed leading dimensions) with operands placed `offset` elements into
// their buffers, against the CPU product of the same bf16 numbers.
double run_case(cuda::CudaContext& ctx, cuda::VaryingDim varying, bool ta, bool tb, int64_t m,
                int64_t n, int64_t k, bool c_f32, float beta, int batch, int64_t offset,
                uint64_t seed) {
  const cuda::GemmShape s{ta, tb, m, n, k, ta ? m : k, tb ? k : n, n};
  const int64_t sa = m * k, sb = k * n, sc = m * n;
  const auto a = kt::round_bf16(kt::rand_vec(batch * sa, seed));
  const auto b = kt::round_bf16(kt::rand_vec(batch * sb, seed + 1));
  const auto c0 = kt::round_bf16(kt::rand_vec(batch * sc, seed + 2));
  std::vector<float> want = c0;
  for (int i = 0; i < batch; ++i)
    cpu::gemm<float>(ta, tb, m, n, k, 1.0f, a.data() + i * sa, b.data() + i * sb, beta,
                     want.data() + i * sc);
  std::vector<uint16_t> a16(offset, 0), b16(offset, 0);
  const auto a_bits = kt::to_bf16(a), b_bits = kt::to_bf16(b);
  a16.insert(a16.end(), a_bits.begin(), a_bits.end());
  b16.insert(b16.end(), b_bits.begin(), b_bits.end());
  DevBuf da = kt::upload(a16), db = kt::upload(b16);
  const size_t c_elem = c_f32 ? 4 : 2;
  DevBuf dc((offset + batch * sc) * c_elem);  // poisoned
  char* c_ptr = static_cast<char*>(dc.ptr) + offset * c_elem;
  if (beta != 0.0f) {
    if (c_f32) {
      kt::upload_to(c_ptr, c0);
    } else {
      kt::upload_to(c_ptr, kt::to_bf16(c0));
    }
  }
  ctx.varying_gemm().run(varying, s, static_cast<const uint16_t*>(da.ptr) + offset, sa,
                         static_cast<const uint16_t*>(db.ptr) + offset, sb, c_ptr, sc, c_f32, batch,
                         1.0f, beta, ctx.stream());
  ctx.synchronize();
  const std::vector<float> got =
      c_f32 ? kt::download<float>(c_ptr, batch * sc) : kt::download_bf16(c_ptr, batch * sc);
  return kt::rel_l2(got, want);
}

TEST_F(VaryingGemmTest, MatchesCpuAcrossSizesAndBands) {
  cuda::CudaContext ctx;
  uint64_t seed = 100;
  for (int variant = 0; variant < 4; ++variant) {
    const bool ta = variant & 1, tb = variant & 2;
    for (const bool c_f32 : {false, true}) {
      // Changing m (forward and dx GEMMs): 130 and 140 share a band, the others do not.
      for (const int64_t m : {130, 192, 140, 320, 40}) {
        const double err =
            run_case(ctx, cuda::VaryingDim::kM, ta, tb, m, 96, 72, c_f32, 0.0f, 1, 0, seed++);
        EXPECT_LT(err, c_f32 ? 1e-5 : 1e-2) << "ta=" << ta << " tb=" << tb << " m=" << m;
      }
      // Changing k (weight gradients), accumulated into C.
      for (const int64_t k : {200, 256, 129, 24}) {
        const double err =
            run_case(ctx, cuda::VaryingDim::kK, ta, tb, 64, 80, k, c_f32, 1.0f, 1, 0, seed++);
        EXPECT_LT(err, c_f32 ? 1e-5 : 1e-2) << "ta=" << ta << " tb=" << tb << " k=" << k;
      }
    }
  }
}

// Timed kernel choice (MOEX_GEMM_AUTOTUNE): the candidates run on a scratch C, so a first call of
// a band that accumulates (beta 1) still adds A B into C exactly once.
TEST_F(VaryingGemmTest, TimedChoiceRunsTheCandidatesAsideAndMatchesCpu) {
  cuda::CudaContext ctx;
  ctx.varying_gemm().set_autotune(true);
  uint64_t seed = 400;
  for (const bool c_f32 : {false, true}) {
    for (const int64_t k : {200, 1000, 24}) {
      const double err =
          run_case(ctx, cuda::VaryingDim::kK, true, false, 192, 160, k, c_f32, 1.0f, 1, 0, seed++);
      EXPECT_LT(err, c_f32 ? 1e-5 : 1e-2) << "k=" << k;
    }
    const double err =
        run_case(ctx, cuda::VaryingDim::kM, false, true, 300, 96, 72, c_f32, 1.0f, 3, 8, seed++);
    EXPECT_LT(err, c_f32 ? 1e-5 : 1e-2) << "strided batch";
  }
  EXPECT_GT(ctx.varying_gemm().timed_choices(), 0) << "no choice was timed";
}

TEST_F(VaryingGemmTest, StridedBatchesAndSmallAlignment) {
  cuda::CudaContext ctx;
  for (const int64_t offset : {0, 8}) {  // 8 bf16 = 16 bytes: aligned for vectors, not for 256
    for (const int64_t m : {96, 72}) {
      const double err = run_case(ctx, cuda::VaryingDim::kM, false, true, m, 48, 40, false, 0.0f, 3,
                                  offset, 700 + m + offset);
      EXPECT_LT(err, 1e-2) << "m=" << m << " offset=" << offset;
    }
    const double err = run_case(ctx, cuda::VaryingDim::kK, true, false, 48, 56, 100, true, 1.0f, 3,
                                offset, 800 + offset);
    EXPECT_LT(err, 1e-5) << "offset=" << offset;
  }
}

TEST_F(VaryingGemmTest, ChoosesOncePerBand) {
  cuda::CudaContext ctx;
  EXPECT_EQ(cuda::VaryingSizeGemm::band(1), 1);
  EXPECT_EQ(cuda::VaryingSizeGemm::band(16), 16);
  EXPECT_EQ(cuda::VaryingSizeGemm::band(17), 18);  // 16 < 17 <= 32: steps of 2
  EXPECT_EQ(cuda::VaryingSizeGemm::band(130), 144);
  EXPECT_EQ(cuda::VaryingSizeGemm::band(1024), 1024);
  EXPECT_EQ(cuda::VaryingSizeGemm::band(1025), 1152);
  EXPECT_EQ(cuda::VaryingSizeGemm::band(2049), 2304);
  const int64_t before = ctx.varying_gemm().choices();
  for (const int64_t m : {1100, 1152, 1025, 1130})  // one band: 1152
    EXPECT_LT(run_case(ctx, cuda::VaryingDim::kM, false, true, m, 64, 64, false, 0.0f, 1, 0, m),
              1e-2);
  EXPECT_EQ(ctx.varying_gemm().choices(), before + 1);
  EXPECT_LT(run_case(ctx, cuda::VaryingDim::kM, false, true, 1153, 64, 64, false, 0.0f, 1, 0, 9),
            1e-2);
  EXPECT_EQ(ctx.varying_gemm().choices(), before + 2);  // the next band
}

// Products on lanes (CudaContext::fork_lanes / join_lanes), each with its own workspace. The main
// stream writes the lanes' input just before the fork (a lane running early would read the
// poison), lane 0 (the main stream) has little to do and the side lanes much, and the main
// stream's next product reads every lane's output (running early, it would read the poison).
TEST_F(VaryingGemmTest, LanesForkAfterAndJoinBeforeTheMainStream) {
  cuda::CudaContext ctx;
  const int lanes = std::min(cuda::CudaContext::kMaxLanes, ctx.varying_gemm().lanes());
  std::vector<int64_t> first(lanes + 1, 0);  // lane i's rows: first[i] .. first[i + 1]
  for (int i = 0; i < lanes; ++i) first[i + 1] = first[i] + (i == 0 ? 64 : 2048);
  const int64_t rows = first[lanes], k0 = 1024, k = 1024, n = 2048, n2 = 64;
  const auto src = kt::round_bf16(kt::rand_vec(rows * k0, 900));
  const float scale = 1.0f / 32.0f;  // 1 / sqrt(1024): the products stay near 1
  const auto p = kt::round_bf16(kt::rand_vec(k0 * k, 901, -scale, scale));
  const auto b = kt::round_bf16(kt::rand_vec(k * n, 902, -scale, scale));
  const auto w = kt::round_bf16(kt::rand_vec(n * n2, 903, -scale, scale));
  DevBuf dsrc = kt::upload(kt::to_bf16(src)), dp = kt::upload(kt::to_bf16(p)),
         db = kt::upload(kt::to_bf16(b)), dw = kt::upload(kt::to_bf16(w));
  DevBuf ain(rows * k * 2), x(rows * n * 2), y(rows * n2 * 4);  // poisoned
  auto* ain_rows = static_cast<uint16_t*>(ain.ptr);
  auto* x_rows = static_cast<uint16_t*>(x.ptr);
  ctx.varying_gemm().run(cuda::VaryingDim::kM, {false, false, rows, k, k0, k0, k, k}, dsrc.ptr, 0,
                         dp.ptr, 0, ain.ptr, 0, false, 1, 1.0f, 0.0f, ctx.stream());
  ctx.fork_lanes(lanes);
  for (int i = 0; i < lanes; ++i) {
    const int64_t m = first[i + 1] - first[i];
    ctx.varying_gemm().run(cuda::VaryingDim::kM, {false, false, m, n, k, k, n, n},
                           ain_rows + first[i] * k, 0, db.ptr, 0, x_rows + first[i] * n, 0, false,
                           1, 1.0f, 0.0f, ctx.lane(i), i);
  }
  ctx.join_lanes(lanes);
  ctx.varying_gemm().run(cuda::VaryingDim::kM, {false, false, rows, n2, n, n, n2, n2}, x.ptr, 0,
                         dw.ptr, 0, y.ptr, 0, true, 1, 1.0f, 0.0f, ctx.stream());
  ctx.synchronize();
  // Each stage against the CPU product of the stage before as the GPU stored it.
  const auto got_ain = kt::download_bf16(ain.ptr, rows * k);
  const auto got_x = kt::download_bf16(x.ptr, rows * n);
  std::vector<float> want_x(rows * n), want_y(rows * n2);
  cpu::gemm<float>(false, false, rows, n, k, 1.0f, got_ain.data(), b.data(), 0.0f, want_x.data());
  cpu::gemm<float>(false, false, rows, n2, n, 1.0f, got_x.data(), w.data(), 0.0f, want_y.data());
  EXPECT_LT(kt::rel_l2(got_x, want_x), 1e-2) << "a lane ran before the fork";
  EXPECT_LT(kt::rel_l2(kt::download<float>(y.ptr, rows * n2), want_y), 1e-5)
      << "the main stream ran before the join";
}

}  // namespace
}  // namespace moex
