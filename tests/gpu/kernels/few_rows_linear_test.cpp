// few_rows_linear (cuda/few_rows_linear.h) against a naive double loop on the host: random bf16
// inputs and weights, poisoned outputs, bf16 output with and without bias and fp32 output, n not a
// multiple of the 32-row units, k longer than one pass of the warps' chunks; each row gets the same
// bits alone as in a batch; and its bandwidth beside cuBLAS on the decode shapes (printed only).
#include "cuda/few_rows_linear.h"

#include <cmath>
#include <string>
#include <vector>

#include "cuda/gemm.h"
#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;

class FewRowsLinearTest : public kt::GpuKernel {};

cuda::FewRowsLinearParams params(const DevBuf& x, const DevBuf& w, const DevBuf* bias,
                                 const DevBuf& y, bool y_f32, int64_t rows, int64_t n, int64_t k) {
  cuda::FewRowsLinearParams p;
  p.x = x.ptr;
  p.w = w.ptr;
  p.bias = bias != nullptr ? bias->ptr : nullptr;
  p.y = y.ptr;
  p.y_f32 = y_f32;
  p.rows = rows;
  p.n = n;
  p.k = k;
  return p;
}

std::vector<float> run(const cuda::CudaContext& ctx, const cuda::FewRowsLinearParams& p,
                       const DevBuf& y) {
  cuda::few_rows_linear(p, ctx.stream());
  const size_t count = static_cast<size_t>(p.rows * p.n) + 5;  // 5 past the end: still poisoned
  return p.y_f32 ? kt::download<float>(y.ptr, count) : kt::download_bf16(y.ptr, count);
}

TEST_F(FewRowsLinearTest, MatchesNaiveLoops) {
  cuda::CudaContext ctx;
  struct Case {
    int64_t n, k;
  };
  for (const Case c : {Case{40, 64}, Case{100, 1096}, Case{33, 8}, Case{7, 4104}})
    for (const int64_t rows : {1, 3, 8, 9, 16})
      for (const int mode : {0, 1, 2}) {  // bf16 y, bf16 y + bias, fp32 y
        const bool y_f32 = mode == 2, with_bias = mode == 1;
        const auto x = kt::round_bf16(kt::rand_vec(rows * c.k, 10 + rows));
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.k));
        const auto w = kt::round_bf16(kt::rand_vec(c.n * c.k, 11, -scale, scale));
        const auto b = kt::round_bf16(kt::rand_vec(c.n, 12));
        DevBuf dx = kt::upload(kt::to_bf16(x)), dw = kt::upload(kt::to_bf16(w)),
               db = kt::upload(kt::to_bf16(b)), dy((rows * c.n + 5) * (y_f32 ? 4 : 2));
        const auto p = params(dx, dw, with_bias ? &db : nullptr, dy, y_f32, rows, c.n, c.k);
        ASSERT_TRUE(cuda::few_rows_linear_fits(p));
        const std::vector<float> got = run(ctx, p, dy);
        std::vector<float> want(rows * c.n);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < c.n; ++j) {
            double acc = 0;
            for (int64_t i = 0; i < c.k; ++i) acc += double(x[r * c.k + i]) * w[j * c.k + i];
            float v = static_cast<float>(acc);
            if (!y_f32) v = bf16_to_f32(f32_to_bf16(v));
            if (with_bias) v = bf16_to_f32(f32_to_bf16(v + b[j]));
            want[r * c.n + j] = v;
          }
        const std::string what = "n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                                 " rows=" + std::to_string(rows) + " mode=" + std::to_string(mode);
        // fp32 sums in another order than the double reference; bf16 output rounding on top.
        EXPECT_LT(kt::rel_l2(std::vector<float>(got.begin(), got.begin() + rows * c.n), want),
                  y_f32 ? 1e-5 : 5e-3)
            << what;
        for (int i = 0; i < 5; ++i) EXPECT_TRUE(std::isnan(got[rows * c.n + i])) << what;
        // Row r alone gets the bits it got in the batch.
        for (const int64_t r : {int64_t{0}, rows - 1}) {
          DevBuf dy1((c.n + 5) * (y_f32 ? 4 : 2));
          auto p1 = params(dx, dw, with_bias ? &db : nullptr, dy1, y_f32, 1, c.n, c.k);
          p1.x = static_cast<const char*>(dx.ptr) + r * c.k * 2;
          const std::vector<float> alone = run(ctx, p1, dy1);
          EXPECT_TRUE(
              kt::same_bits(std::vector<float>(alone.begin(), alone.begin() + c.n),
                            std::vector<float>(got.begin() + r * c.n, got.begin() + (r + 1) * c.n)))
              << what << " row " << r;
        }
      }
}

TEST_F(FewRowsLinearTest, RefusesWhatItCannotTake) {
  DevBuf x(64 * 2), w(64 * 2), y(64 * 4);
  EXPECT_FALSE(cuda::few_rows_linear_fits(params(x, w, nullptr, y, false, 17, 4, 16)));
  EXPECT_FALSE(cuda::few_rows_linear_fits(params(x, w, nullptr, y, false, 1, 4, 12)));
  auto p = params(x, w, nullptr, y, false, 1, 4, 16);
  p.x = static_cast<const char*>(x.ptr) + 2;
  EXPECT_FALSE(cuda::few_rows_linear_fits(p));
  EXPECT_FALSE(cuda::few_rows_linear_wins(p));
  // ops::linear takes it for one row of a small matrix (split along k), cuBLAS for an LM head's
  // and for more rows.
  EXPECT_TRUE(cuda::few_rows_linear_wins(params(x, w, nullptr, y, false, 1, 4096, 4096)));
  EXPECT_FALSE(cuda::few_rows_linear_wins(params(x, w, nullptr, y, false, 8, 4096, 4096)));
  EXPECT_FALSE(cuda::few_rows_linear_wins(params(x, w, nullptr, y, true, 1, 32000, 4096)));
}

// The decode step's projections (mixtral4l: QKV, output, LM head) at 1 and 8 rows, beside cuBLAS.
// Four weight copies in turn, so a matrix smaller than L2 is still read from memory.
TEST_F(FewRowsLinearTest, ReportsBandwidthBesideCublas) {
  cuda::CudaContext ctx;
  struct Case {
    const char* name;
    int64_t n, k;
    bool y_f32;
  };
  for (const Case c : {Case{"qkv", 6144, 4096, false}, Case{"out", 4096, 4096, false},
                       Case{"lm_head", 32000, 4096, true}})
    for (const int64_t rows : {1, 8}) {
      std::vector<DevBuf> ws;
      for (int i = 0; i < 4; ++i) ws.push_back(kt::dev_rand_bf16(c.n * c.k, 20 + i, -0.02f, 0.02f));
      DevBuf x = kt::dev_rand_bf16(rows * c.k, 30), y(rows * c.n * 4);
      const double bytes = 2.0 * c.n * c.k;
      int turn = 0;
      const std::string base = std::string(c.name) + " rows=" + std::to_string(rows);
      kt::report_bandwidth((base + " few_rows").c_str(), bytes, ctx.stream(), [&] {
        cuda::few_rows_linear(params(x, ws[turn++ % 4], nullptr, y, c.y_f32, rows, c.n, c.k),
                              ctx.stream());
      });
      kt::report_bandwidth((base + " cublas").c_str(), bytes, ctx.stream(), [&] {
        cuda::GemmShape s{false, true, rows, c.n, c.k, c.k, c.k, c.n};
        cuda::gemm_bf16(ctx.cublas(), s, x.ptr, 0, ws[turn++ % 4].ptr, 0, y.ptr, 0, c.y_f32, 1);
      });
    }
}

}  // namespace
}  // namespace moex
