#include <cuda_bf16.h>

#include <algorithm>

#include "core/error.h"
#include "cuda/cuda_check.h"
#include "cuda/paged_attention.h"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kWarpsPerBlock = 8;
constexpr int kMaxPairsPerLane = 4;   // head_dim <= 256, two dims per lane and pair
constexpr int kPositionsPerPass = 4;  // positions a warp has in flight at once

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per (row, head); its warps split the row's positions into contiguous chunks and walk
// them kPositionsPerPass at a time with an online softmax (fp32), so a decode row's positions are
// read by many warps in parallel, each with several key and value rows in flight (a step is
// latency-bound: one warp walking every position in order left the SMs idle). Lane l holds dims
// 2l, 2l + 1 (+ 64 i) of q and of the output. The warps' partial softmaxes are merged through
// shared memory at the end.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    paged_attention_kernel(PagedAttentionParams p, float scale) {
  __shared__ float part_m[kWarpsPerBlock], part_sum[kWarpsPerBlock];
  __shared__ float part_acc[kWarpsPerBlock][2 * 32 * kMaxPairsPerLane];
  const int64_t item = blockIdx.x;  // row * heads + head
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = item / p.heads, h = item % p.heads;
  const int64_t dh = p.head_dim, kd = p.kv_heads * dh;
  const int64_t kv_off = (h / (p.heads / p.kv_heads)) * dh;
  const int32_t* table = p.tables + int64_t{p.row_seq[r]} * p.max_blocks;
  const int64_t len = int64_t{p.row_pos[r]} + 1;
  const int64_t chunk = (len + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t begin = min(len, warp * chunk), end = min(len, begin + chunk);
  const auto* q =
      reinterpret_cast<const __nv_bfloat162*>(static_cast<const bf16*>(p.q) + item * dh);
  const bf16* kp = static_cast<const bf16*>(p.k_pool);
  const bf16* vp = static_cast<const bf16*>(p.v_pool);
  float2 qv[kMaxPairsPerLane], acc[kMaxPairsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPairsPerLane; ++i) {
    const int64_t d = 2 * lane + 64 * i;
    const float2 f = d < dh ? __bfloat1622float2(q[d / 2]) : make_float2(0.0f, 0.0f);
    qv[i] = make_float2(f.x * scale, f.y * scale);
    acc[i] = make_float2(0.0f, 0.0f);
  }
  float m = -INFINITY, sum = 0.0f;
  for (int64_t base = begin; base < end; base += kPositionsPerPass) {
    // Issue every load of the pass before the first reduction.
    float2 kv[kPositionsPerPass][kMaxPairsPerLane], vv[kPositionsPerPass][kMaxPairsPerLane];
#pragma unroll
    for (int j = 0; j < kPositionsPerPass; ++j) {
      const int64_t pos = min(base + j, end - 1);  // past the end: a repeat, weighted 0 below
      const int64_t slot =
          (int64_t{table[pos / p.block_size]} * p.block_size + pos % p.block_size) * kd + kv_off;
      const auto* k2 = reinterpret_cast<const __nv_bfloat162*>(kp + slot);
      const auto* v2 = reinterpret_cast<const __nv_bfloat162*>(vp + slot);
#pragma unroll
      for (int i = 0; i < kMaxPairsPerLane; ++i) {
        const int64_t d = 2 * lane + 64 * i;
        kv[j][i] = d < dh ? __bfloat1622float2(k2[d / 2]) : make_float2(0.0f, 0.0f);
        vv[j][i] = d < dh ? __bfloat1622float2(v2[d / 2]) : make_float2(0.0f, 0.0f);
      }
    }
    float s[kPositionsPerPass];
#pragma unroll
    for (int j = 0; j < kPositionsPerPass; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxPairsPerLane; ++i)
        dot = fmaf(qv[i].x, kv[j][i].x, fmaf(qv[i].y, kv[j][i].y, dot));
      s[j] = base + j < end ? warp_sum(dot) : -INFINITY;
    }
    float m_new = m;
#pragma unroll
    for (int j = 0; j < kPositionsPerPass; ++j) m_new = fmaxf(m_new, s[j]);
    const float keep = __expf(m - m_new);
    sum *= keep;
#pragma unroll
    for (int i = 0; i < kMaxPairsPerLane; ++i)
      acc[i] = make_float2(acc[i].x * keep, acc[i].y * keep);
#pragma unroll
    for (int j = 0; j < kPositionsPerPass; ++j) {
      const float w = __expf(s[j] - m_new);
      sum += w;
#pragma unroll
      for (int i = 0; i < kMaxPairsPerLane; ++i) {
        acc[i].x = fmaf(w, vv[j][i].x, acc[i].x);
        acc[i].y = fmaf(w, vv[j][i].y, acc[i].y);
      }
    }
    m = m_new;
  }
  if (lane == 0) {
    part_m[warp] = m;
    part_sum[warp] = sum;
  }
#pragma unroll
  for (int i = 0; i < kMaxPairsPerLane; ++i) {
    const int64_t d = 2 * lane + 64 * i;
    if (d < dh) {
      part_acc[warp][d] = acc[i].x;
      part_acc[warp][d + 1] = acc[i].y;
    }
  }
  __syncthreads();
  // Merge: the first warp's chunk is never empty (len >= 1), so the block's max is finite and a
  // warp without positions (m = -inf, sum = 0) weighs 0.
  float m_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarpsPerBlock; ++w) m_all = fmaxf(m_all, part_m[w]);
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarpsPerBlock; ++w) total += part_sum[w] * __expf(part_m[w] - m_all);
  bf16* out = static_cast<bf16*>(p.out) + item * dh;
  for (int64_t d = threadIdx.x; d < dh; d += blockDim.x) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) o += part_acc[w][d] * __expf(part_m[w] - m_all);
    out[d] = __float2bfloat16(o / total);
  }
}

// One thread per element (grid-stride): a step moves a few rows. kScatter: dst[index[r]] =
// src[r]; else dst[r] = src[index[r]].
template <bool kScatter>
__global__ void move_rows_kernel(const bf16* src, const int32_t* index, int64_t num_rows,
                                 int64_t width, bf16* dst) {
  const int64_t n = num_rows * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / width, c = i % width, other = int64_t{index[r]} * width + c;
    if (kScatter)
      dst[other] = src[i];
    else
      dst[i] = src[other];
  }
}

template <bool kScatter>
void move_rows(const void* src, const int32_t* index, int64_t num_rows, int64_t width, void* dst,
               cudaStream_t stream) {
  const int64_t n = num_rows * width;
  if (n == 0) return;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 4096));
  move_rows_kernel<kScatter><<<blocks, threads, 0, stream>>>(
      static_cast<const bf16*>(src), index, num_rows, width, static_cast<bf16*>(dst));
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void paged_attention_bf16(const PagedAttentionParams& p, cudaStream_t stream) {
  MOEX_CHECK(p.head_dim > 0 && p.head_dim <= 64 * kMaxPairsPerLane && p.head_dim % 2 == 0,
             "paged_attention_bf16: head_dim must be even and in [2, ", 64 * kMaxPairsPerLane,
             "], got ", p.head_dim);
  MOEX_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0,
             "paged_attention_bf16: heads (", p.heads, ") must be a multiple of kv_heads (",
             p.kv_heads, ")");
  if (p.rows == 0) return;
  const auto blocks = static_cast<unsigned>(p.rows * p.heads);
  paged_attention_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(
      p, 1.0f / sqrtf(static_cast<float>(p.head_dim)));
  CUDA_CHECK(cudaGetLastError());
}

void scatter_rows_bf16(const void* rows, const int32_t* slots, int64_t num_rows, int64_t width,
                       void* pool, cudaStream_t stream) {
  move_rows<true>(rows, slots, num_rows, width, pool, stream);
}

void gather_rows_bf16(const void* src, const int32_t* index, int64_t num_rows, int64_t width,
                      void* out, cudaStream_t stream) {
  move_rows<false>(src, index, num_rows, width, out, stream);
}

}  // namespace moex::cuda
