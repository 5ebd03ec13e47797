// Warp-level building blocks of the attention kernels: bf16 tensor-core MMA (m16n8k16, fp32
// accumulate), ldmatrix fragment loads, cp.async tile copies into padded shared-memory rows.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, c = 2 * (lane % 4)):
//   A 16x16: a0 (g, c..c+1)  a1 (g+8, c..)  a2 (g, c+8..)  a3 (g+8, c+8..)
//   B 16x8:  b0 (k = c..c+1, n = g)  b1 (k = c+8.., n = g)
//   C 16x8:  c0,c1 (g, c..c+1)  c2,c3 (g+8, c..c+1)
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moex::cuda::attn {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// d += a * b on one 16x8x16 tile.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 bf16 matrices; lane L gives the row address of matrix L / 8, row L % 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 16-byte async copy; src_bytes 0 writes zeros (rows and columns past the tensor's edge).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// Copies rows [0, rows) x columns [0, d) of a bf16 matrix into a [kRows][kStride] shared tile of
// kCols (>= d) columns, zero-filling the rest; row_ptr(r) is where row r starts (called for rows
// < rows only), and `global` any global address (the source of the zero-byte copies). vec: d % 8
// == 0 and 16-byte aligned rows, so whole 16-byte chunks go through cp.async; otherwise element by
// element (odd head sizes).
template <int kRows, int kCols, int kStride, int kThreads, typename RowPtr>
__device__ __forceinline__ void load_rows(bf16* s, RowPtr row_ptr, const bf16* global, int rows,
                                          int d, bool vec) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  if (vec) {
    // Every source address first, then the copies: a row_ptr that reads memory (a block table)
    // does not stall each copy behind its own lookup.
    constexpr int kIters = (kChunks + kThreads - 1) / kThreads;
    const bf16* src[kIters];
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int i = it * kThreads + threadIdx.x;
      const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
      const bool in = (kChunks % kThreads == 0 || i < kChunks) && r < rows && c < d;
      src[it] = in ? row_ptr(r) + c : nullptr;
    }
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int i = it * kThreads + threadIdx.x;
      if (kChunks % kThreads != 0 && i >= kChunks) break;
      const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
      cp_async16(s + r * kStride + c, src[it] != nullptr ? src[it] : global,
                 src[it] != nullptr ? 16 : 0);
    }
  } else {
    for (int i = threadIdx.x; i < kChunks; i += kThreads) {
      const int r = i / kChunksPerRow, c = (i % kChunksPerRow) * 8;
      const bf16* src = r < rows ? row_ptr(r) : nullptr;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const bool in = r < rows && c + e < d;
        s[r * kStride + c + e] = in ? src[c + e] : __float2bfloat16(0.0f);
      }
    }
  }
}

// load_rows of a strided matrix: row r at g + r * row_stride.
template <int kRows, int kCols, int kStride, int kThreads>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int64_t row_stride, int rows,
                                          int d, bool vec) {
  load_rows<kRows, kCols, kStride, kThreads>(
      s, [=](int r) { return g + r * row_stride; }, g, rows, d, vec);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace moex::cuda::attn
