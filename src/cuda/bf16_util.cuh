// Device helpers for bf16 storage with fp32 math: 16-byte vectors of 8 bf16 values.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moex::cuda {

struct alignas(16) Bf16x8 {
  __nv_bfloat162 v[4];
};

__device__ __forceinline__ void load_bf16x8(const void* p, float (&out)[8]) {
  const Bf16x8 pack = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(pack.v[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void store_bf16x8(void* p, const float (&in)[8]) {
  Bf16x8 pack;
#pragma unroll
  for (int i = 0; i < 4; ++i) pack.v[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  *reinterpret_cast<Bf16x8*>(p) = pack;
}

__device__ __forceinline__ void zero_bf16x8(void* p) {
  *reinterpret_cast<uint4*>(p) = make_uint4(0, 0, 0, 0);
}

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Grid size for a grid-stride loop: enough blocks to fill the chip several times over.
inline unsigned grid_for(int64_t work, int threads, int64_t max_blocks = 132 * 16) {
  int64_t blocks = ceil_div(work, threads);
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace moex::cuda
