// The few-row linear (cuda/few_rows_linear.h) against naive loops on the host: random inputs,
// poisoned outputs, column counts that are not multiples of the tiles, bias, fp32 output; then its
// time against cuBLAS on the decode shapes of a Mixtral layer (printed, never asserted).
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

TEST_F(FewRowsLinearTest, MatchesNaiveLoops) {
  cuda::CudaContext ctx;
  for (const int64_t n : {int64_t{1}, int64_t{5}, int64_t{9}, int64_t{16}})
    for (const int64_t out : {int64_t{40}, int64_t{97}})
      for (const int64_t in : {int64_t{64}, int64_t{200}})
        for (const int mode : {0, 1, 2}) {  // bf16 y, bf16 y + bias, fp32 y
          const bool bias = mode == 1, y_f32 = mode == 2;
          const auto x = kt::round_bf16(kt::rand_vec(n * in, 1 + n));
          const auto w = kt::round_bf16(kt::rand_vec(out * in, 2 + out, -0.2f, 0.2f));
          const auto b = kt::round_bf16(kt::rand_vec(out, 3));
          std::vector<float> want(n * out);
          for (int64_t r = 0; r < n; ++r)
            for (int64_t j = 0; j < out; ++j) {
              double acc = 0;
              for (int64_t i = 0; i < in; ++i) acc += double(x[r * in + i]) * w[j * in + i];
              float v = static_cast<float>(acc);
              if (!y_f32) v = bf16_to_f32(f32_to_bf16(v));
              if (bias) v = bf16_to_f32(f32_to_bf16(v + b[j]));
              want[r * out + j] = v;
            }
          DevBuf dx = kt::upload(kt::to_bf16(x)), dw = kt::upload(kt::to_bf16(w)),
                 db = kt::upload(kt::to_bf16(b)), dy(n * out * (y_f32 ? 4 : 2));
          cuda::few_rows_linear_bf16(dx.ptr, dw.ptr, bias ? db.ptr : nullptr, dy.ptr, y_f32, n, out,
                                     in, ctx.stream());
          const auto got =
              y_f32 ? kt::download<float>(dy.ptr, n * out) : kt::download_bf16(dy.ptr, n * out);
          // fp32 accumulation in another order than the double reference.
          EXPECT_LT(kt::rel_l2(got, want), y_f32 ? 1e-5 : 4e-3)
              << "n=" << n << " out=" << out << " in=" << in << " mode=" << mode;
        }
}

TEST_F(FewRowsLinearTest, RefusesWhatItCannotTake) {
  cuda::CudaContext ctx;
  DevBuf x(64 * 2 * 17), w(64 * 2 * 8);
  EXPECT_FALSE(cuda::few_rows_linear_fits(cuda::kFewRowsLinearMax + 1, 64, x.ptr, w.ptr));
  EXPECT_FALSE(cuda::few_rows_linear_fits(4, 60, x.ptr, w.ptr));
  EXPECT_FALSE(cuda::few_rows_linear_fits(4, 64, static_cast<char*>(x.ptr) + 2, w.ptr));
  EXPECT_TRUE(cuda::few_rows_linear_fits(4, 64, x.ptr, w.ptr));
  EXPECT_THROW(
      cuda::few_rows_linear_bf16(x.ptr, w.ptr, nullptr, x.ptr, false, 17, 8, 64, ctx.stream()),
      Error);
}

// Weight bytes over time for the few-row kernel and cuBLAS on Mixtral's QKV, O and LM head.
TEST_F(FewRowsLinearTest, ReportsBandwidthAgainstCublas) {
  cuda::CudaContext ctx;
  struct Case {
    const char* name;
    int64_t out, in;
    bool y_f32;
  };
  for (const Case& c : {Case{"qkv", 6144, 4096, false}, Case{"o", 4096, 4096, false},
                        Case{"lm_head", 32000, 4096, true}}) {
    DevBuf w = kt::dev_rand_bf16(c.out * c.in, 4, -0.02f, 0.02f);
    for (const int64_t n : {int64_t{1}, int64_t{8}, int64_t{16}, int64_t{32}}) {
      DevBuf x = kt::dev_rand_bf16(n * c.in, 5), y(n * c.out * 4);
      const double bytes = 2.0 * c.out * c.in;
      const std::string what = std::string("linear ") + c.name + " n=" + std::to_string(n);
      if (n <= cuda::kFewRowsLinearMax)
        kt::report_bandwidth((what + " few-rows").c_str(), bytes, ctx.stream(), [&] {
          cuda::few_rows_linear_bf16(x.ptr, w.ptr, nullptr, y.ptr, c.y_f32, n, c.out, c.in,
                                     ctx.stream());
        });
      kt::report_bandwidth((what + " cublas").c_str(), bytes, ctx.stream(), [&] {
        cuda::GemmShape s{false, true, n, c.out, c.in, c.in, c.in, c.out};
        cuda::gemm_bf16(ctx.cublas(), s, x.ptr, 0, w.ptr, 0, y.ptr, 0, c.y_f32, 1);
      });
    }
  }
}

}  // namespace
}  // namespace moex
