// y = x W^T for a few rows of x (decoding) on tensor cores, with W streamed from memory once: the
// core of the MoE decode kernels (cuda/moe_decode.cu); docs/gpu-model.md §Decoding.
//
// A block of kFewRowsWarps warps computes one "unit" of 32 weight rows (two 16-row m-tiles, whose
// row pointers the caller picks) against up to 8 * kNT rows of x (the 8-wide N side of
// mma.m16n8k16). The warps split the reduction into interleaved 32-element chunks and sum their
// partial tiles through shared memory in warp order, so results are deterministic.
//
// Loads: lane (g = lane / 4, q = lane % 4) reads 16 bytes (8 consecutive k) of weight rows g and
// g + 8 of each m-tile and of x row g of each n-tile, at chunk offset 8q. A permutation of k shared
// by A and B leaves the product unchanged, so those 8 values are the lane's fragment slots of both
// 16-wide k-steps: step s takes words 2s (logical k 2q..2q+1) and 2s + 1 (logical k 2q+8..2q+9).
// No shared-memory staging, no ldmatrix; weights bypass L1, x rows come from L1/L2.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

namespace moex::cuda {

constexpr int kFewRowsWarps = 4;
constexpr int kFewRowsThreads = kFewRowsWarps * 32;

// Shared memory of one block: the warps' partial tiles.
template <int kNT>
struct FewRowsSmem {
  float partial[kFewRowsWarps][2][kNT][4][32];
};

// d += a * b on one 16x8x16 tile (bf16 in, fp32 accumulate). Fragments (g = lane / 4,
// c = 2 * (lane % 4)): A a0 (g, c..c+1) a1 (g+8, c..) a2 (g, c+8..) a3 (g+8, c+8..); B b0 (k =
// c..c+1, n = g) b1 (k = c+8.., n = g); C c0,c1 (g, c..c+1) c2,c3 (g+8, c..c+1).
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                            uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A 16-byte weight load that bypasses L1 and asks L2 for the next 256 bytes. volatile: it stays
// before the mma.sync calls that follow it in the source, so all of a batch is in flight at once.
__device__ __forceinline__ uint4 load_weights16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The block's sums of one unit. w[i]: this lane's weight rows, [m-tile 0 row g, m-tile 0 row g+8,
// m-tile 1 row g, m-tile 1 row g+8], each K long; x[t]: this lane's x row of n-tile t (tiles <= kNT
// are used, warp-uniform). Then epilogue(t, h) runs once per used n-tile, in warp t %
// kFewRowsWarps, with h[m][i] the sum of m-tile m at weight row g + 8 (i >= 2) and x row 8t + 2q +
// (i & 1). Every thread of the block must call this (it synchronises).
// BeforeX{}() runs once in every thread, after its first batch of weight loads is issued and before
// anything reads x or writes memory: a kernel launched early passes its wait for the kernel ahead
// there, so that batch streams while the kernel ahead finishes (the weights are never written by
// a kernel of the step; docs/gpu-model.md §Decoding).
struct NothingBeforeX {
  __device__ void operator()() const {}
};
template <int kNT, typename BeforeX = NothingBeforeX, typename Epilogue>
__device__ __forceinline__ void few_rows_unit(const __nv_bfloat16* const (&w)[4],
                                              const __nv_bfloat16* const (&x)[kNT], int64_t K,
                                              int tiles, FewRowsSmem<kNT>& smem,
                                              Epilogue&& epilogue) {
  const BeforeX before_x;
  // Chunks of weight loads in flight per warp (docs/gpu-model.md §Decoding): 8 with one n-tile
  // (the few blocks of a one-token call need every byte in flight they can get), 4 with two (8 took
  // the 16- and 32-token calls from 725 / 966 to 952 / 1245 us on the H200).
  constexpr int kU = kNT == 1 ? 8 : 4;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, q = lane & 3;
  float acc[2][kNT][4];
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int t = 0; t < kNT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[m][t][i] = 0.0f;
  // One batch: every weight load of the kU chunks from c0 is issued before the first multiply,
  // unconditionally (a chunk past K reads offset 0 and its x is zeroed), so nothing branches
  // between them; then between(); then the x loads (L1/L2 hits) one chunk at a time, which keeps
  // registers for weights in flight.
  auto batch = [&](int64_t c0, auto&& between) {
    uint4 wv[kU][4];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t k = (c0 + int64_t{kFewRowsWarps} * u) * 32 + 8 * q;
      const int64_t kc = k < K ? k : 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) wv[u][i] = load_weights16(w[i] + kc);
    }
    between();
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t k = (c0 + int64_t{kFewRowsWarps} * u) * 32 + 8 * q;
      const bool in = k < K;
      const int64_t kc = in ? k : 0;
#pragma unroll
      for (int t = 0; t < kNT; ++t) {
        if (t >= tiles) break;
        uint4 xv = __ldg(reinterpret_cast<const uint4*>(x[t] + kc));
        if (!in) xv = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
          for (int m = 0; m < 2; ++m)
            mma_16x8x16(acc[m][t], word_of(wv[u][2 * m], 2 * s), word_of(wv[u][2 * m + 1], 2 * s),
                        word_of(wv[u][2 * m], 2 * s + 1), word_of(wv[u][2 * m + 1], 2 * s + 1),
                        word_of(xv, 2 * s), word_of(xv, 2 * s + 1));
      }
    }
  };
  constexpr int64_t kStep = int64_t{kFewRowsWarps} * kU;
  if constexpr (std::is_same_v<BeforeX, NothingBeforeX>) {
    // The plain loop for kernels that waited at their start: the peeled form below (measured
    // with a wait between) cost the two-n-tile expert calls 12-16 % on the H200.
    for (int64_t c0 = warp; c0 * 32 < K; c0 += kStep) batch(c0, NothingBeforeX{});
  } else {
    // The first batch apart, so that the loop has no branch of its own for before_x.
    int64_t c0 = warp;
    if (c0 * 32 < K) {
      batch(c0, before_x);
      c0 += kStep;
    } else {
      before_x();  // a warp with no chunk (K under 32 * warps)
    }
    for (; c0 * 32 < K; c0 += kStep) batch(c0, NothingBeforeX{});
  }
#pragma unroll
  for (int m = 0; m < 2; ++m)
#pragma unroll
    for (int t = 0; t < kNT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) smem.partial[warp][m][t][i][lane] = acc[m][t][i];
  __syncthreads();
  for (int t = warp; t < tiles; t += kFewRowsWarps) {
    float h[2][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float sum = 0.0f;
#pragma unroll
        for (int v = 0; v < kFewRowsWarps; ++v) sum += smem.partial[v][m][t][i][lane];
        h[m][i] = sum;
      }
    epilogue(t, h);
  }
  __syncthreads();  // the partials are written again by the next call
}

}  // namespace moex::cuda
