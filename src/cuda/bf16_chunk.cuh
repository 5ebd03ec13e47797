// Chunks of W consecutive bf16 values, W = 8 (one 16-byte vector, needs 16-byte alignment) or
// W = 1 (any size, any alignment). Kernels templated on W serve aligned multiple-of-8 sizes with
// vector loads and every other size with the same code, scalar.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/bf16_util.cuh"

namespace moex::cuda {

// Raw (still bf16) chunk kept in registers: half the registers of its fp32 values.
template <int W>
struct RawChunk;
template <>
struct RawChunk<8> {
  uint4 u;
};
template <>
struct RawChunk<1> {
  __nv_bfloat16 h;
};

template <int W>
__device__ __forceinline__ RawChunk<W> load_raw(const __nv_bfloat16* p) {
  if constexpr (W == 8) {
    return RawChunk<8>{*reinterpret_cast<const uint4*>(p)};
  } else {
    return RawChunk<1>{*p};
  }
}

template <int W>
__device__ __forceinline__ RawChunk<W> zero_raw() {
  if constexpr (W == 8) {
    return RawChunk<8>{make_uint4(0, 0, 0, 0)};
  } else {
    return RawChunk<1>{__float2bfloat16_rn(0.0f)};
  }
}

template <int W>
__device__ __forceinline__ void unpack(const RawChunk<W>& r, float (&out)[W]) {
  if constexpr (W == 8) {
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&r.u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  } else {
    out[0] = __bfloat162float(r.h);
  }
}

template <int W>
__device__ __forceinline__ void load_chunk(const __nv_bfloat16* p, float (&out)[W]) {
  unpack<W>(load_raw<W>(p), out);
}

// Rounds to nearest even.
template <int W>
__device__ __forceinline__ RawChunk<W> pack(const float (&in)[W]) {
  if constexpr (W == 8) {
    RawChunk<8> r;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&r.u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
    return r;
  } else {
    return RawChunk<1>{__float2bfloat16_rn(in[0])};
  }
}

template <int W>
__device__ __forceinline__ void store_raw(__nv_bfloat16* p, const RawChunk<W>& r) {
  if constexpr (W == 8) {
    *reinterpret_cast<uint4*>(p) = r.u;
  } else {
    *p = r.h;
  }
}

// Rounds to nearest even.
template <int W>
__device__ __forceinline__ void store_chunk(__nv_bfloat16* p, const float (&in)[W]) {
  if constexpr (W == 8) {
    store_bf16x8(p, in);
  } else {
    *p = __float2bfloat16_rn(in[0]);
  }
}

inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace moex::cuda
