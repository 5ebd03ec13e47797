// Forward attention kernel (FA2 scheme): a CTA owns kBr = 16 * kMT * kWarps queries of one
// (batch, head), each warp 16 * kMT of them; it walks the key tiles 0..last visible with an
// online softmax in fp32 registers. K/V tiles are double-buffered through cp.async; Q stays in
// shared memory. Causal masking runs only on tiles that cross the diagonal; tiles wholly above it
// are not loaded (for the CTA) or not computed (for a warp whose rows all end before the tile).
//
// The paged variant (kPaged) serves prompt chunks of a serving step (docs/gpu-model.md
// §Decoding): a CTA owns one tile of up to kBr consecutive rows of one sequence, listed by the
// host, and reads the sequence's keys and values through its block table in the paged pool.
#pragma once

#include <cmath>

#include "cuda/attention_mma.cuh"

namespace moex::cuda::attn {

struct FwdArgs {
  const bf16* q;  // [B, Tq, H, d]
  const bf16* k;  // [B, Tk, Hkv, d]
  const bf16* v;  // [B, Tk, Hkv, d]
  bf16* out;      // [B, Tq, H, d]
  float* lse;     // [B, H, Tq]
  int q_len, kv_len, num_heads, num_kv_heads, head_dim, start_pos;
  float scale_log2;  // softmax scale * log2(e): exponentials are exp2
  bool vec;          // 16-byte loads allowed
  // Paged variant: q and out are a step's rows [R, H, d], k and v the pools [blocks, bs, Hkv, d];
  // tile t is tiles[4t..4t+3] = {first row, rows (<= kBr), sequence, position of the first row},
  // and sequence s's position n sits in pool row tables[s * max_blocks + n / bs] * bs + n % bs.
  // lse is not written (null). q_len, kv_len, start_pos and batch are unused.
  const int32_t* tiles = nullptr;
  const int32_t* tables = nullptr;
  int block_size = 0, max_blocks = 0;
  int tile_rows = 0;  // the most rows of a tile (checked against kBr at launch)
};

template <int kD, int kWarps, int kBc, int kMT>
struct FwdTile {
  static constexpr int kBr = 16 * kMT * kWarps;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStride = kD + 8;  // +16 bytes per row: ldmatrix rows hit distinct banks
  static constexpr int kSmemBytes = (kBr + 4 * kBc) * kStride * 2;  // Q + 2 x (K, V)
  // The paged variant adds the pool rows of two key tiles.
  static constexpr int kPagedSmemBytes = kSmemBytes + 2 * kBc * 4;
};

// kMT: 16-row query tiles per warp; each K/V fragment read from shared memory feeds kMT MMAs.
// kQRegs: the warp's Q fragments stay in registers across key tiles instead of being re-read
// from shared memory for every tile (fewer shared loads, more registers).
template <int kD, int kWarps, int kBc, int kMT, bool kQRegs, bool kPaged>
__global__ void __launch_bounds__(32 * kWarps) attention_fwd_kernel(const FwdArgs a) {
  using Tile = FwdTile<kD, kWarps, kBc, kMT>;
  constexpr int kBr = Tile::kBr, kS = Tile::kStride, kThreads = Tile::kThreads;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [kBr][kS]
  bf16* sK = sQ + kBr * kS;                  // [2][kBc][kS]
  bf16* sV = sK + 2 * kBc * kS;              // [2][kBc][kS]
  // Paged: the pool row of each key of the next two key tiles, [2][kBc] (tile t in t & 1).
  int* s_rows = reinterpret_cast<int*>(sV + 2 * kBc * kS);
  static_assert(!kPaged || kThreads >= kBc, "a thread per key row finds the tile's pool rows");

  const int H = a.num_heads, d = a.head_dim;
  const int h = blockIdx.x % H;
  const int kvh = h / (H / a.num_kv_heads);
  const int64_t q_stride = int64_t{H} * d, kv_stride = int64_t{a.num_kv_heads} * d;
  // This CTA's queries: rows [m0, m0 + rows_q) of a q_len-row sequence at positions start_pos..,
  // the first of them row q_row0 of q and out; keys [0, kv_len).
  int m0, rows_q, start_pos, kv_len;
  int64_t q_row0;
  const bf16 *k, *v;
  const int32_t* table = nullptr;  // paged: the sequence's block table
  float* lse = nullptr;            // [q_len] of this (batch, head)
  if constexpr (kPaged) {
    const int32_t* tile = a.tiles + 4 * (blockIdx.x / H);
    q_row0 = tile[0];
    rows_q = tile[1];
    table = a.tables + int64_t{tile[2]} * a.max_blocks;
    start_pos = tile[3];
    m0 = 0;
    kv_len = start_pos + rows_q;
    k = a.k + int64_t{kvh} * d;
    v = a.v + int64_t{kvh} * d;
  } else {
    const int b = blockIdx.x / H;
    const int m_block = gridDim.y - 1 - blockIdx.y;  // the longest rows start first
    m0 = m_block * kBr;
    rows_q = min(kBr, a.q_len - m0);
    start_pos = a.start_pos;
    kv_len = a.kv_len;
    q_row0 = int64_t{b} * a.q_len + m0;
    k = a.k + int64_t{b} * a.kv_len * kv_stride + int64_t{kvh} * d;
    v = a.v + int64_t{b} * a.kv_len * kv_stride + int64_t{kvh} * d;
    lse = a.lse + (int64_t{b} * H + h) * a.q_len + m0;
  }
  const bf16* q = a.q + q_row0 * q_stride + int64_t{h} * d;
  // Keys [0, kv_end) are visible to some row of this tile.
  const int kv_end = min(kv_len, start_pos + m0 + rows_q);
  const int n_tiles = (kv_end + kBc - 1) / kBc;
  // Paged: the pool row of key (t * kBc + threadIdx.x), for threads < kBc. Its table load is
  // issued a tile ahead (the value is stored to s_rows after the math of the tile between), so
  // no load of keys or values waits on a table lookup.
  auto pool_row = [&](int t) {
    const int n = t * kBc + threadIdx.x, bs = a.block_size;
    return threadIdx.x < kBc && n < kv_len ? table[n / bs] * bs + n % bs : 0;
  };
  // Keys and values n0 .. n0 + rows - 1 into shared buffer `buf` (paged: of key tile n0 / kBc).
  auto load_kv = [&](int buf, int n0, int rows) {
    bf16* tk = sK + buf * kBc * kS;
    bf16* tv = sV + buf * kBc * kS;
    if constexpr (kPaged) {
      const int* tile_rows = s_rows + buf * kBc;
      auto row_k = [=](int r) { return k + tile_rows[r] * kv_stride; };
      auto row_v = [=](int r) { return v + tile_rows[r] * kv_stride; };
      load_rows<kBc, kD, kS, kThreads>(tk, row_k, k, rows, d, a.vec);
      load_rows<kBc, kD, kS, kThreads>(tv, row_v, v, rows, d, a.vec);
    } else {
      load_tile<kBc, kD, kS, kThreads>(tk, k + n0 * kv_stride, kv_stride, rows, d, a.vec);
      load_tile<kBc, kD, kS, kThreads>(tv, v + n0 * kv_stride, kv_stride, rows, d, a.vec);
    }
  };

  int next_rows = 0;  // paged: this thread's pool row in key tile j + 2, stored after tile j
  if constexpr (kPaged) {
    if (threadIdx.x < kBc) {
      s_rows[threadIdx.x] = pool_row(0);
      s_rows[kBc + threadIdx.x] = pool_row(1);
    }
    __syncthreads();
  }
  load_tile<kBr, kD, kS, kThreads>(sQ, q, q_stride, rows_q, d, a.vec);
  load_kv(0, 0, min(kBc, kv_len));
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, c = 2 * (lane % 4);
  const int wrow0 = 16 * kMT * warp;                 // warp's first row in the tile
  const int pos0 = start_pos + m0 + wrow0;           // its position
  const int warp_pos_max = pos0 + 16 * kMT - 1;

  float o[kMT][kD / 8][4];  // out accumulator, 16 * kMT x kD per warp
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int i = 0; i < kD / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
  // Running max (scaled, log2 units) and this thread's part of the running sum, rows g and g+8
  // of each 16-row tile.
  float m_run[kMT][2], l_run[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.0f;
  }
  uint32_t qreg[kQRegs ? kMT : 1][kQRegs ? kD / 16 : 1][4];

  for (int j = 0; j < n_tiles; ++j) {
    if (j + 1 < n_tiles) {
      const int n1 = (j + 1) * kBc;
      load_kv((j + 1) & 1, n1, min(kBc, kv_len - n1));
      if constexpr (kPaged) next_rows = pool_row(j + 2);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int n0 = j * kBc;
    if (n0 <= warp_pos_max) {  // else every key of the tile is above this warp's rows
      const bf16* tK = sK + (j & 1) * kBc * kS;
      const bf16* tV = sV + (j & 1) * kBc * kS;
      float s[kMT][kBc / 8][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int i = 0; i < kBc / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.0f;
      // S = Q K^T
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t qa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const bf16* qsrc =
              sQ + (wrow0 + 16 * mt + (lane % 16)) * kS + kk * 16 + (lane / 16) * 8;
          if constexpr (kQRegs) {
            if (j == 0) ldmatrix_x4(qreg[mt][kk], qsrc);
#pragma unroll
            for (int e = 0; e < 4; ++e) qa[mt][e] = qreg[mt][kk][e];
          } else {
            ldmatrix_x4(qa[mt], qsrc);
          }
        }
#pragma unroll
        for (int nt = 0; nt < kBc / 16; ++nt) {
          uint32_t kb[4];
          ldmatrix_x4(kb, tK + (nt * 16 + (lane % 8) + (lane / 16) * 8) * kS + kk * 16 +
                              ((lane / 8) % 2) * 8);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16(s[mt][2 * nt], qa[mt], kb[0], kb[1]);
            mma_bf16(s[mt][2 * nt + 1], qa[mt], kb[2], kb[3]);
          }
        }
      }
      // Scale, mask the diagonal, online softmax.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const int pos_lo = pos0 + 16 * mt + g;  // row g; row g+8 is 8 further
        const bool diag = n0 + kBc - 1 > pos0 + 16 * mt;
        float mx[2] = {m_run[mt][0], m_run[mt][1]};
#pragma unroll
        for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mt][nt][e] * a.scale_log2;
            if (diag) {
              const int key = n0 + nt * 8 + c + (e & 1);
              if (key > pos_lo + (e >> 1) * 8) x = -INFINITY;
            }
            s[mt][nt][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
          }
        }
        float base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          mx[r] = quad_max(mx[r]);
          base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
          const float corr = exp2f(m_run[mt][r] - base[r]);
          m_run[mt][r] = mx[r];
          l_run[mt][r] *= corr;
#pragma unroll
          for (int i = 0; i < kD / 8; ++i) {
            o[mt][i][2 * r] *= corr;
            o[mt][i][2 * r + 1] *= corr;
          }
        }
#pragma unroll
        for (int nt = 0; nt < kBc / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float p = exp2f(s[mt][nt][e] - base[e >> 1]);
            s[mt][nt][e] = p;
            l_run[mt][e >> 1] += p;
          }
        }
      }
      // O += P V; the accumulator layout of two adjacent key octets is the A layout of P.
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk) {
        uint32_t pa[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dt = 0; dt < kD / 16; ++dt) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, tV + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * kS +
                                    dt * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_bf16(o[mt][2 * dt], pa[mt], vb[0], vb[1]);
            mma_bf16(o[mt][2 * dt + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    // Tile j's rows were used when its loads were issued (the iteration before): tile j + 2's
    // take their place, seen by every thread after the barrier.
    if constexpr (kPaged)
      if (threadIdx.x < kBc && j + 2 < n_tiles) s_rows[(j & 1) * kBc + threadIdx.x] = next_rows;
    __syncthreads();  // the next iteration's prefetch overwrites this buffer
  }

  // Epilogue: out = O / l, lse = ln(sum exp(scale * q.k)).
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(l_run[mt][r]);
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int row = wrow0 + 16 * mt + g + 8 * r;  // in the tile
      if (row >= rows_q) continue;
      bf16* orow = a.out + (q_row0 + row) * q_stride + int64_t{h} * d;
#pragma unroll
      for (int i = 0; i < kD / 8; ++i) {
        const int col = i * 8 + c;
        if (col < d)
          *reinterpret_cast<__nv_bfloat162*>(orow + col) =
              __floats2bfloat162_rn(o[mt][i][2 * r] * inv, o[mt][i][2 * r + 1] * inv);
      }
      if (lse != nullptr && lane % 4 == 0)
        lse[row] = (m_run[mt][r] + log2f(l)) * 0.69314718055994531f;
    }
  }
}

}  // namespace moex::cuda::attn
