// The router's fp32 products (cuda/router_gemm.h) against double-precision loops, on random inputs
// with poisoned outputs: logits z = xj w^T, weight gradient dw = dz^T xj (over token chunks and
// their partials) and input gradient dxj = dz w, for token counts that leave partial warps and
// chunks, widths that are not multiples of 128, and 1 to 16 experts. Each is rerun with its
// outputs poisoned again and must give the same bits (fixed summation orders).
#include "cuda/router_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernel_test_util.h"

namespace moex {
namespace {

using kt::DevBuf;
using kt::download;
using kt::rand_vec;
using kt::upload;

class RouterGemmTest : public kt::GpuKernel {};

// Largest |got - want| over the largest |want|: every element is a sum of many products, so
// cancellation can make single elements small. An output left unwritten reads as the poison's
// NaN: infinite error.
double worst_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return scale > 0 ? err / scale : err;
}

TEST_F(RouterGemmTest, ProductsMatchDoubleLoopsAndRepeatTheirBits) {
  cuda::CudaContext ctx;
  const auto s = ctx.stream();
  struct Case {
    int64_t T, d;
    int E;
  };
  // T = 0; partial warps and chunks; whole chunks (128); 1, 3, 8, 9, 10 and 16 experts.
  for (const Case& c : {Case{0, 128, 4}, Case{1, 4, 1}, Case{37, 132, 3}, Case{128, 256, 9},
                        Case{1000, 1024, 8}, Case{197, 516, 10}, Case{257, 2048, 16}}) {
    const std::string tag = "T " + std::to_string(c.T) + " d " + std::to_string(c.d) + " E " +
                            std::to_string(c.E);
    const auto xj = rand_vec(c.T * c.d, 11 + c.T, -2, 2);
    const auto w = rand_vec(c.E * c.d, 12 + c.d, -0.5f, 0.5f);
    const auto dz = rand_vec(c.T * c.E, 13 + c.E, -1, 1);
    DevBuf dxj_in = upload(xj), dw_in = upload(w), ddz = upload(dz);
    DevBuf z(c.T * c.E * 4), dw(c.E * c.d * 4), dxj(c.T * c.d * 4);
    // The partials go where the MoE layer puts them, in dxj's buffer, when it is large enough.
    const int64_t partial_floats = cuda::router_weight_grad_partial_floats(c.T, c.d, c.E);
    DevBuf partial(partial_floats * 4);
    float* partials = partial_floats <= c.T * c.d ? dxj.as<float>() : partial.as<float>();
    ASSERT_TRUE(cuda::router_gemm_fits(c.d, c.E, dxj_in.ptr, dw_in.ptr, z.ptr)) << tag;
    auto run = [&] {
      cuda::router_logits_f32(dxj_in.as<float>(), dw_in.as<float>(), c.T, c.d, c.E,
                              z.as<float>(), s);
      cuda::router_weight_grad_f32(ddz.as<float>(), dxj_in.as<float>(), c.T, c.d, c.E, partials,
                                   dw.as<float>(), s);
      cuda::router_input_grad_f32(ddz.as<float>(), dw_in.as<float>(), c.T, c.d, c.E,
                                  dxj.as<float>(), s);
      return std::vector<std::vector<float>>{download<float>(z.ptr, c.T * c.E),
                                             download<float>(dw.ptr, c.E * c.d),
                                             download<float>(dxj.ptr, c.T * c.d)};
    };
    const auto first = run();
    std::vector<double> want_z(c.T * c.E), want_dw(c.E * c.d, 0.0), want_dxj(c.T * c.d, 0.0);
    for (int64_t t = 0; t < c.T; ++t) {
      for (int e = 0; e < c.E; ++e) {
        double acc = 0;
        for (int64_t i = 0; i < c.d; ++i) acc += double{xj[t * c.d + i]} * w[e * c.d + i];
        want_z[t * c.E + e] = acc;
        const double g = dz[t * c.E + e];
        for (int64_t i = 0; i < c.d; ++i) {
          want_dw[e * c.d + i] += g * xj[t * c.d + i];
          want_dxj[t * c.d + i] += g * w[e * c.d + i];
        }
      }
    }
    EXPECT_LT(worst_error(first[0], want_z), 1e-5) << tag << " logits";
    EXPECT_LT(worst_error(first[1], want_dw), 1e-5) << tag << " weight gradient";
    EXPECT_LT(worst_error(first[2], want_dxj), 1e-5) << tag << " input gradient";
    z.poison();
    dw.poison();
    dxj.poison();
    partial.poison();
    const auto second = run();
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(kt::same_bits(first[k], second[k])) << tag << " " << k;
  }
}

TEST_F(RouterGemmTest, ShapesOutsideTheKernelsGoToCublas) {
  DevBuf a(64 * 4), b(64 * 4), c(64 * 4);
  EXPECT_FALSE(cuda::router_gemm_fits(16, cuda::kRouterGemmMaxExperts + 1, a.ptr, b.ptr, c.ptr));
  EXPECT_FALSE(cuda::router_gemm_fits(18, 8, a.ptr, b.ptr, c.ptr));  // d % 4 != 0
  EXPECT_FALSE(cuda::router_gemm_fits(16, 8, a.as<float>() + 1, b.ptr, c.ptr));  // misaligned
  EXPECT_TRUE(cuda::router_gemm_fits(16, 8, a.ptr, b.ptr, c.ptr));
  EXPECT_THROW(cuda::router_logits_f32(a.as<float>(), b.as<float>(), 1, 18, 8, c.as<float>(),
                                       nullptr),
               Error);
}

}  // namespace
}  // namespace moex
