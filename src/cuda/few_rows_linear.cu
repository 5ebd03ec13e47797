#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "cuda/bf16_chunk.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/few_rows_linear.h"
#include "cuda/few_rows_mma.cuh"

namespace moex::cuda {
namespace {

// One block per unit of 32 output columns (two m-tiles: weight rows 32u.. and 32u + 16..); rows of
// x in passes of 8 * kNT.
template <int kNT>
__global__ void __launch_bounds__(kFewRowsThreads)
    few_rows_linear_kernel(const __nv_bfloat16* x, const __nv_bfloat16* w,
                           const __nv_bfloat16* bias, void* y, bool y_f32, int n, int64_t out,
                           int64_t in) {
  __shared__ FewRowsSmem<kNT> smem;
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t units = (out + 31) / 32;
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    auto weight_row = [&](int m, int h) {
      return w + min(unit * 32 + 16 * m + g + 8 * h, out - 1) * in;  // clamped: output dropped
    };
    const __nv_bfloat16* const wr[4] = {weight_row(0, 0), weight_row(0, 1), weight_row(1, 0),
                                        weight_row(1, 1)};
    for (int g0 = 0; g0 < n; g0 += 8 * kNT) {
      const int tiles = min(kNT, (n - g0 + 7) / 8);
      const __nv_bfloat16* xr[kNT];
#pragma unroll
      for (int t = 0; t < kNT; ++t) xr[t] = x + int64_t{min(g0 + 8 * t + g, n - 1)} * in;
      few_rows_unit<kNT>(wr, xr, in, tiles, smem, [&](int t, const float(&h)[2][4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = g0 + 8 * t + 2 * q + (i & 1);
          if (r >= n) continue;
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            const int64_t j = unit * 32 + 16 * m + g + (i >= 2 ? 8 : 0);
            if (j >= out) continue;
            if (y_f32) {
              static_cast<float*>(y)[r * out + j] = h[m][i];
            } else {
              float v = h[m][i];
              if (bias) v = __bfloat162float(__float2bfloat16(v)) + __bfloat162float(bias[j]);
              static_cast<__nv_bfloat16*>(y)[r * out + j] = __float2bfloat16(v);
            }
          }
        }
      });
    }
  }
}

}  // namespace

bool few_rows_linear_fits(int64_t n, int64_t in, const void* x, const void* w) {
  return n >= 1 && n <= kFewRowsLinearMax && in % 8 == 0 && aligned16(x) && aligned16(w);
}

void few_rows_linear_bf16(const void* x, const void* w, const void* bias, void* y, bool y_f32,
                          int64_t n, int64_t out, int64_t in, cudaStream_t stream) {
  MOEX_CHECK(few_rows_linear_fits(n, in, x, w) && out > 0 && !(y_f32 && bias),
             "few_rows_linear_bf16: n=", n, " (at most ", kFewRowsLinearMax, "), in=", in,
             " (a multiple of 8), out=", out, ", 16-byte aligned x and w, no bias with fp32 y");
  const auto* xb = static_cast<const __nv_bfloat16*>(x);
  const auto* wb = static_cast<const __nv_bfloat16*>(w);
  const auto* bb = static_cast<const __nv_bfloat16*>(bias);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(out, 32), 65535));
  const int rows = static_cast<int>(n);
  if (n <= 8) {
    few_rows_linear_kernel<1>
        <<<blocks, kFewRowsThreads, 0, stream>>>(xb, wb, bb, y, y_f32, rows, out, in);
  } else {
    few_rows_linear_kernel<2>
        <<<blocks, kFewRowsThreads, 0, stream>>>(xb, wb, bb, y, y_f32, rows, out, in);
  }
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
