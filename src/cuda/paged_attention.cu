#include <cuda_bf16.h>

#include <algorithm>

#include "core/error.h"
#include "cuda/cuda_check.h"
#include "cuda/paged_attention.h"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxDimsPerLane = 8;  // head_dim <= 256

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp per (row, head): lane l holds dims l, l + 32, ... of q and of the output, walks the
// row's positions in order with an online softmax (fp32), and reads each key and value row once
// (coalesced across the lanes). Decode rows attend a few hundred to a few thousand positions, so
// one warp per head keeps every SM busy at batch >= 4 without splitting the positions.
__global__ void paged_attention_kernel(PagedAttentionParams p, float scale) {
  const int64_t item = int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32;
  if (item >= p.rows * p.heads) return;
  const int lane = threadIdx.x % 32;
  const int64_t r = item / p.heads, h = item % p.heads;
  const int64_t dh = p.head_dim, kd = p.kv_heads * dh;
  const int64_t kv_off = (h / (p.heads / p.kv_heads)) * dh;
  const int32_t* table = p.tables + int64_t{p.row_seq[r]} * p.max_blocks;
  const int64_t len = int64_t{p.row_pos[r]} + 1;
  const bf16* q = static_cast<const bf16*>(p.q) + item * dh;
  const bf16* kp = static_cast<const bf16*>(p.k_pool);
  const bf16* vp = static_cast<const bf16*>(p.v_pool);
  float qv[kMaxDimsPerLane], acc[kMaxDimsPerLane];
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < dh ? __bfloat162float(q[d]) * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, sum = 0.0f;
  for (int64_t pos = 0; pos < len; ++pos) {
    const int64_t slot =
        (int64_t{table[pos / p.block_size]} * p.block_size + pos % p.block_size) * kd + kv_off;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < dh) dot += qv[i] * __bfloat162float(kp[slot + d]);
    }
    const float s = warp_sum(dot);
    const float m_new = fmaxf(m, s);
    const float keep = __expf(m - m_new), w = __expf(s - m_new);
    sum = sum * keep + w;
#pragma unroll
    for (int i = 0; i < kMaxDimsPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < dh) acc[i] = acc[i] * keep + w * __bfloat162float(vp[slot + d]);
    }
    m = m_new;
  }
  bf16* out = static_cast<bf16*>(p.out) + item * dh;
#pragma unroll
  for (int i = 0; i < kMaxDimsPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < dh) out[d] = __float2bfloat16(acc[i] / sum);
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
  MOEX_CHECK(p.head_dim > 0 && p.head_dim <= 32 * kMaxDimsPerLane,
             "paged_attention_bf16: head_dim must be in [1, ", 32 * kMaxDimsPerLane, "], got ",
             p.head_dim);
  MOEX_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0,
             "paged_attention_bf16: heads (", p.heads, ") must be a multiple of kv_heads (",
             p.kv_heads, ")");
  if (p.rows == 0) return;
  const int64_t items = p.rows * p.heads;
  const unsigned blocks = static_cast<unsigned>((items + kWarpsPerBlock - 1) / kWarpsPerBlock);
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
