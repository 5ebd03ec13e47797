// Backward attention kernels (FA2 scheme, training case start_pos == 0, Tq == Tk == T).
//
// attention_bwd_kernel: a CTA owns kBc = 16 * kWarps keys of one (batch, kv head), each warp 16
// of them, and loops over every query head of the kv group and every query tile of kBm rows at
// or below the diagonal. Per tile, in fp32 registers:
//   S^T = K Q^T, dP^T = V dO^T, P^T = exp2(S^T * scale_log2 - lse2), dS^T = P^T (dP^T - Di)
//   dV += P^T dO, dK += dS^T Q          (register accumulators: deterministic)
//   dQ += scale * dS K                   (dS^T through shared memory; fp32 atomics to a workspace)
// Computing the transposed scores keeps P^T and dS^T in the A-fragment layout that the dV and dK
// products need, so only dS goes through shared memory (once, for dQ).
#pragma once

#include <cmath>

#include "cuda/attention_mma.cuh"

namespace moex::cuda::attn {

struct BwdArgs {
  const bf16* q;     // [B, T, H, d]
  const bf16* k;     // [B, T, Hkv, d]
  const bf16* v;     // [B, T, Hkv, d]
  const bf16* dout;  // [B, T, H, d]
  const float* lse;  // [B, H, T] natural log
  const float* di;   // [B, H, T] rowsum(dout * out)
  float* dq_acc;     // [B, T, H, d] fp32, zeroed before the launch
  bf16* dk;          // [B, T, Hkv, d]
  bf16* dv;          // [B, T, Hkv, d]
  int seq, num_heads, num_kv_heads, head_dim;
  float scale, scale_log2;
  bool vec;
};

template <int kD, int kWarps, int kBm>
struct BwdTile {
  static constexpr int kBc = 16 * kWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStride = kD + 8;
  static constexpr int kDsStride = kBm + 8;
  static constexpr int kSmemBytes = (2 * kBc + 4 * kBm) * kStride * 2  // K, V, 2 x (Q, dO)
                                    + kBc * kDsStride * 2                // dS^T
                                    + 4 * kBm * 4;                       // 2 x (lse2, Di)
  // dQ = dS K: warp w takes query rows 16 * (w % kMTiles) and kDqCols head columns.
  static constexpr int kMTiles = kBm / 16;
  static constexpr int kDqCols = kD * kMTiles / kWarps;
  static_assert(kWarps % kMTiles == 0 && kDqCols % 16 == 0, "dQ split");
};

template <int kD, int kWarps, int kBm>
__global__ void __launch_bounds__(32 * kWarps) attention_bwd_kernel(const BwdArgs a) {
  using Tile = BwdTile<kD, kWarps, kBm>;
  constexpr int kBc = Tile::kBc, kS = Tile::kStride, kDs = Tile::kDsStride;
  constexpr int kThreads = Tile::kThreads;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);  // [kBc][kS]
  bf16* sV = sK + kBc * kS;                  // [kBc][kS]
  bf16* sQ = sV + kBc * kS;                  // [2][kBm][kS]
  bf16* sdO = sQ + 2 * kBm * kS;             // [2][kBm][kS]
  bf16* sdS = sdO + 2 * kBm * kS;            // [kBc][kDs], dS^T
  float* sLse = reinterpret_cast<float*>(sdS + kBc * kDs);  // [2][kBm], lse * log2(e)
  float* sDi = sLse + 2 * kBm;                              // [2][kBm]

  const int T = a.seq, H = a.num_heads, Hkv = a.num_kv_heads, d = a.head_dim;
  const int group = H / Hkv;
  const int b = blockIdx.x / Hkv, kvh = blockIdx.x % Hkv;
  const int n0 = blockIdx.y * kBc;  // key tile 0 (the most query tiles) starts first
  const int64_t q_stride = int64_t{H} * d, kv_stride = int64_t{Hkv} * d;
  const int64_t kv_off = (int64_t{b} * T + n0) * kv_stride + int64_t{kvh} * d;
  const int rows_k = min(kBc, T - n0);
  load_tile<kBc, kD, kS, kThreads>(sK, a.k + kv_off, kv_stride, rows_k, d, a.vec);
  load_tile<kBc, kD, kS, kThreads>(sV, a.v + kv_off, kv_stride, rows_k, d, a.vec);

  const int m_first = n0 / kBm;  // query tiles below this one see none of the keys
  const int m_tiles = (T + kBm - 1) / kBm;
  const int per_head = m_tiles - m_first;
  const int n_iter = group * per_head;

  // Stage iteration it (head, query tile) into buffer it & 1.
  auto stage = [&](int it) {
    const int h = kvh * group + it / per_head, m0 = (m_first + it % per_head) * kBm;
    const int buf = it & 1, rows = min(kBm, T - m0);
    const int64_t off = (int64_t{b} * T + m0) * q_stride + int64_t{h} * d;
    load_tile<kBm, kD, kS, kThreads>(sQ + buf * kBm * kS, a.q + off, q_stride, rows, d, a.vec);
    load_tile<kBm, kD, kS, kThreads>(sdO + buf * kBm * kS, a.dout + off, q_stride, rows, d,
                                     a.vec);
    for (int i = threadIdx.x; i < kBm; i += kThreads) {
      const int64_t li = (int64_t{b} * H + h) * T + m0 + i;
      // A row past the sequence gets lse = +inf: its probabilities are exactly 0.
      sLse[buf * kBm + i] = m0 + i < T ? a.lse[li] * 1.4426950408889634f : INFINITY;
      sDi[buf * kBm + i] = m0 + i < T ? a.di[li] : 0.0f;
    }
  };
  stage(0);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = 2 * (lane % 4);
  const int wkey0 = 16 * warp;        // warp's first key in the tile
  const int key_lo = n0 + wkey0 + g;  // key of accumulator row g (row g+8: +8)

  float dk[kD / 8][4], dv[kD / 8][4];  // 16 keys x kD per warp
#pragma unroll
  for (int i = 0; i < kD / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.0f;

  for (int it = 0; it < n_iter; ++it) {
    if (it + 1 < n_iter) stage(it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int buf = it & 1;
    const int h = kvh * group + it / per_head, m0 = (m_first + it % per_head) * kBm;
    const bf16* tQ = sQ + buf * kBm * kS;
    const bf16* tdO = sdO + buf * kBm * kS;
    const float* tLse = sLse + buf * kBm;
    const float* tDi = sDi + buf * kBm;

    if (n0 + wkey0 > m0 + kBm - 1) {
      // Every key of this warp is above every query of the tile: dS^T rows are zero.
#pragma unroll
      for (int nt = 0; nt < kBm / 8; ++nt) {
        *reinterpret_cast<uint32_t*>(sdS + (wkey0 + g) * kDs + nt * 8 + c) = 0u;
        *reinterpret_cast<uint32_t*>(sdS + (wkey0 + g + 8) * kDs + nt * 8 + c) = 0u;
      }
    } else {
      float st[kBm / 8][4], dpt[kBm / 8][4];  // S^T, dP^T: 16 keys x kBm queries
#pragma unroll
      for (int i = 0; i < kBm / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[i][e] = dpt[i][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t ka[4], va[4];
        ldmatrix_x4(ka, sK + (wkey0 + (lane % 16)) * kS + kk * 16 + (lane / 16) * 8);
        ldmatrix_x4(va, sV + (wkey0 + (lane % 16)) * kS + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int nt = 0; nt < kBm / 16; ++nt) {
          const int off = (nt * 16 + (lane % 8) + (lane / 16) * 8) * kS + kk * 16 +
                          ((lane / 8) % 2) * 8;
          uint32_t qb[4], ob[4];
          ldmatrix_x4(qb, tQ + off);
          ldmatrix_x4(ob, tdO + off);
          mma_bf16(st[2 * nt], ka, qb[0], qb[1]);
          mma_bf16(st[2 * nt + 1], ka, qb[2], qb[3]);
          mma_bf16(dpt[2 * nt], va, ob[0], ob[1]);
          mma_bf16(dpt[2 * nt + 1], va, ob[2], ob[3]);
        }
      }
      // P^T and dS^T in place of S^T and dP^T.
      const bool diag = n0 + wkey0 + 15 > m0;
#pragma unroll
      for (int nt = 0; nt < kBm / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + c + (e & 1);
          float p = exp2f(st[nt][e] * a.scale_log2 - tLse[qi]);
          if (diag && key_lo + (e >> 1) * 8 > m0 + qi) p = 0.0f;
          st[nt][e] = p;
          dpt[nt][e] = p * (dpt[nt][e] - tDi[qi]);
        }
        *reinterpret_cast<uint32_t*>(sdS + (wkey0 + g) * kDs + nt * 8 + c) =
            pack_bf16(dpt[nt][0], dpt[nt][1]);
        *reinterpret_cast<uint32_t*>(sdS + (wkey0 + g + 8) * kDs + nt * 8 + c) =
            pack_bf16(dpt[nt][2], dpt[nt][3]);
      }
      // dV += P^T dO, dK += dS^T Q.
#pragma unroll
      for (int kk = 0; kk < kBm / 16; ++kk) {
        const uint32_t pa[4] = {pack_bf16(st[2 * kk][0], st[2 * kk][1]),
                                pack_bf16(st[2 * kk][2], st[2 * kk][3]),
                                pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                                pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
        const uint32_t sa[4] = {pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]),
                                pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]),
                                pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                                pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
        for (int dt = 0; dt < kD / 16; ++dt) {
          const int off = (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kS + dt * 16 +
                          (lane / 16) * 8;
          uint32_t ob[4], qb[4];
          ldmatrix_x4_trans(ob, tdO + off);
          ldmatrix_x4_trans(qb, tQ + off);
          mma_bf16(dv[2 * dt], pa, ob[0], ob[1]);
          mma_bf16(dv[2 * dt + 1], pa, ob[2], ob[3]);
          mma_bf16(dk[2 * dt], sa, qb[0], qb[1]);
          mma_bf16(dk[2 * dt + 1], sa, qb[2], qb[3]);
        }
      }
    }
    __syncthreads();  // dS^T complete

    // dQ[m0 + 16 mt .., col0 ..] += scale * dS K, with dS read transposed out of dS^T.
    {
      const int mt = warp % Tile::kMTiles;
      const int col0 = (warp / Tile::kMTiles) * Tile::kDqCols;
      float dq[Tile::kDqCols / 8][4];
#pragma unroll
      for (int i = 0; i < Tile::kDqCols / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t sa[4];
        ldmatrix_x4_trans(sa, sdS + (kk * 16 + (lane % 8) + (lane / 16) * 8) * kDs + mt * 16 +
                                  ((lane / 8) % 2) * 8);
#pragma unroll
        for (int dt = 0; dt < Tile::kDqCols / 16; ++dt) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, sK + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kS + col0 +
                                    dt * 16 + (lane / 16) * 8);
          mma_bf16(dq[2 * dt], sa, kb[0], kb[1]);
          mma_bf16(dq[2 * dt + 1], sa, kb[2], kb[3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = m0 + mt * 16 + g + 8 * r;
        if (row >= T) continue;
        float* dst = a.dq_acc + (int64_t{b} * T + row) * q_stride + int64_t{h} * d;
#pragma unroll
        for (int i = 0; i < Tile::kDqCols / 8; ++i) {
          const int col = col0 + i * 8 + c;
          if (col >= d) continue;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float2*>(dst + col),
                    make_float2(dq[i][2 * r] * a.scale, dq[i][2 * r + 1] * a.scale));
#else
          atomicAdd(dst + col, dq[i][2 * r] * a.scale);
          atomicAdd(dst + col + 1, dq[i][2 * r + 1] * a.scale);
#endif
        }
      }
    }
    __syncthreads();  // buffers and dS^T are rewritten next iteration
  }

  // dk = scale * dK, dv = dV, for keys inside the sequence.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key_lo + 8 * r;
    if (key >= T) continue;
    const int64_t off = (int64_t{b} * T + key) * kv_stride + int64_t{kvh} * d;
#pragma unroll
    for (int i = 0; i < kD / 8; ++i) {
      const int col = i * 8 + c;
      if (col >= d) continue;
      *reinterpret_cast<__nv_bfloat162*>(a.dk + off + col) =
          __floats2bfloat162_rn(dk[i][2 * r] * a.scale, dk[i][2 * r + 1] * a.scale);
      *reinterpret_cast<__nv_bfloat162*>(a.dv + off + col) =
          __floats2bfloat162_rn(dv[i][2 * r], dv[i][2 * r + 1]);
    }
  }
}

// Di[b, h, i] = sum_c dout[b, i, h, c] * out[b, i, h, c] in fp32; one warp per (b, i, h) row.
__global__ void attention_bwd_dot_kernel(const bf16* dout, const bf16* out, float* di, int64_t rows,
                                         int seq, int num_heads, int head_dim) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; r < rows;
       r += warps) {
    const bf16* x = dout + r * head_dim;
    const bf16* y = out + r * head_dim;
    float sum = 0.0f;
    for (int col = 2 * lane; col < head_dim; col += 64) {
      const float2 xv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x + col));
      const float2 yv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(y + col));
      sum += xv.x * yv.x + xv.y * yv.y;
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) {
      const int64_t h = r % num_heads, bi = r / num_heads;  // bi = b * seq + i
      const int64_t b = bi / seq, i = bi % seq;
      di[(b * num_heads + h) * seq + i] = sum;
    }
  }
}

// dq (bf16) = dq_acc (fp32), two elements per thread.
__global__ void attention_bwd_dq_convert_kernel(const float* acc, bf16* dq, int64_t pairs) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < pairs;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float2 x = reinterpret_cast<const float2*>(acc)[i];
    reinterpret_cast<__nv_bfloat162*>(dq)[i] = __floats2bfloat162_rn(x.x, x.y);
  }
}

}  // namespace moex::cuda::attn
