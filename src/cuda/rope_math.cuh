// RoPE's per-position table and rotation, shared by the kernels that rotate (cuda/rope.cu, and the
// decode attention of cuda/paged_attention.cu, which rotates a row's own q and k itself): one
// definition, so their results are the same bits.
#pragma once

#include <cuda_runtime.h>

namespace moex::cuda {

// The block's cos/sin table [half] of one position: (cos, sign * sin) of pos * inv_freq[i], in
// fp32 as the CPU twin and transformers form it (inv_freq, then pos * inv_freq, then cos/sin).
__device__ __forceinline__ void form_table(float2* cos_sin, int half, int head_dim, float pos,
                                           float theta, float sign) {
  const int threads = blockDim.x * blockDim.y;
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < half; i += threads) {
    const float inv_freq =
        1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    float sn, cs;
    sincosf(pos * inv_freq, &sn, &cs);
    cos_sin[i] = make_float2(cs, sign * sn);
  }
}

// y = x rotated: element j of the first half pairs with element j of the second, (c, s) the
// table's (cos, sign * sin) at their pair index. The multiplies and adds are spelled out
// (__fmul_rn, __fmaf_rn), so no caller's compilation contracts them differently.
template <int W>
__device__ __forceinline__ void rotate(const float (&x1)[W], const float (&x2)[W],
                                       const float (&c)[W], const float (&s)[W], float (&y1)[W],
                                       float (&y2)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    y1[j] = __fmaf_rn(x1[j], c[j], -__fmul_rn(x2[j], s[j]));
    y2[j] = __fmaf_rn(x2[j], c[j], __fmul_rn(x1[j], s[j]));
  }
}

}  // namespace moex::cuda
