#include <cuda_bf16.h>

#include <algorithm>

#include "core/env.h"
#include "core/error.h"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/last_block.cuh"
#include "cuda/launch.cuh"
#include "cuda/paged_attention.h"
#include "cuda/split_workspace.h"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kWarpsPerBlock = 8;
constexpr int kPositionsPerPass = 4;  // positions a warp has in flight at once
// A split gets at least this many positions of the block tables' reach (two passes of every
// warp), so short contexts are not split; tables reaching twice as far split (docs/gpu-model.md
// §Decoding has the measurements behind these numbers).
constexpr int64_t kMinSplitPositions = 64;
constexpr int kMaxSplits = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per (row, group of G query heads sharing one KV head): each key and value row is read
// once for the G heads (grouped-query attention). The block's warps split the row's positions into
// contiguous chunks and walk them kPositionsPerPass at a time with an online softmax per head
// (fp32), so a decode row's positions are read by many warps in parallel, each with several key
// and value rows in flight (a step is latency-bound). Lane l holds dims 2l, 2l + 1 (+ 64 i, i < P)
// of q and of the output: P = 1, 2, 4 serve head_dim <= 64, 128, 256 with no idle registers. The
// warps' partial softmaxes are merged through shared memory at the end.
// Shared memory: part_acc [warps, G, 64 P], part_m and part_sum [warps, G].
// With launch_splits > 1, up to launch_splits blocks serve one (row, head group), each a
// contiguous share of the row's positions; the last to finish merges their partial softmaxes,
// left in ws: partial [blocks, G, dh + 2] (the unnormalised output, then the running max and
// sum), a counter per (row, group).
template <int P, int G>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    paged_attention_kernel(PagedAttentionParams p, float scale, SplitWorkspace ws,
                           int launch_splits) {
  extern __shared__ float smem[];
  wait_for_previous_kernel();
  float* part_acc = smem;
  float* part_m = part_acc + kWarpsPerBlock * G * 64 * P;
  float* part_sum = part_m + kWarpsPerBlock * G;
  const int64_t groups = p.heads / G;
  // unit: this block's (row of the launch, head group); with tiles, the launch covers the rows
  // outside them (rest_rows).
  const int64_t unit = blockIdx.x / launch_splits, split = blockIdx.x % launch_splits;
  const int64_t row_of_launch = unit / groups, h0 = (unit % groups) * G;
  const int64_t r = p.tiles != nullptr ? p.rest_rows[row_of_launch] : row_of_launch;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t dh = p.head_dim, kd = p.kv_heads * dh;
  const int64_t kv_off = (h0 / (p.heads / p.kv_heads)) * dh;
  const int32_t* table = p.tables + int64_t{p.row_seq[r]} * p.max_blocks;
  const int64_t len = int64_t{p.row_pos[r]} + 1;
  // The splits this row uses: no more than its length fills with kMinSplitPositions each, so a
  // short row in a launch sized for long ones (tables padded to the longest context) is one block
  // writing its output itself; the unit's other blocks leave at once, without arriving.
  const int splits =
      static_cast<int>(min(int64_t{launch_splits},
                           max(int64_t{1}, (len + kMinSplitPositions - 1) / kMinSplitPositions)));
  if (split >= splits) return;
  // This block's positions [first, last), split among its warps.
  const int64_t share = (len + splits - 1) / splits;
  const int64_t first = min(len, split * share), last = min(len, first + share);
  const int64_t chunk = (last - first + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t begin = min(last, first + warp * chunk), end = min(last, begin + chunk);
  const bf16* kp = static_cast<const bf16*>(p.k_pool);
  const bf16* vp = static_cast<const bf16*>(p.v_pool);
  float2 qv[G][P], acc[G][P];
  float m[G], sum[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const auto* q = reinterpret_cast<const __nv_bfloat162*>(static_cast<const bf16*>(p.q) +
                                                            (r * p.heads + h0 + g) * dh);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t d = 2 * lane + 64 * i;
      const float2 f = d < dh ? __bfloat1622float2(q[d / 2]) : make_float2(0.0f, 0.0f);
      qv[g][i] = make_float2(f.x * scale, f.y * scale);
      acc[g][i] = make_float2(0.0f, 0.0f);
    }
    m[g] = -INFINITY;
    sum[g] = 0.0f;
  }
  for (int64_t base = begin; base < end; base += kPositionsPerPass) {
    // Issue every load of the pass before the first reduction.
    float2 kv[kPositionsPerPass][P], vv[kPositionsPerPass][P];
#pragma unroll
    for (int j = 0; j < kPositionsPerPass; ++j) {
      const int64_t pos = min(base + j, end - 1);  // past the end: a repeat, weighted 0 below
      const int64_t slot =
          (int64_t{table[pos / p.block_size]} * p.block_size + pos % p.block_size) * kd + kv_off;
      const auto* k2 = reinterpret_cast<const __nv_bfloat162*>(kp + slot);
      const auto* v2 = reinterpret_cast<const __nv_bfloat162*>(vp + slot);
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const int64_t d = 2 * lane + 64 * i;
        kv[j][i] = d < dh ? __bfloat1622float2(k2[d / 2]) : make_float2(0.0f, 0.0f);
        vv[j][i] = d < dh ? __bfloat1622float2(v2[d / 2]) : make_float2(0.0f, 0.0f);
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float s[kPositionsPerPass];
#pragma unroll
      for (int j = 0; j < kPositionsPerPass; ++j) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < P; ++i)
          dot = fmaf(qv[g][i].x, kv[j][i].x, fmaf(qv[g][i].y, kv[j][i].y, dot));
        s[j] = base + j < end ? warp_sum(dot) : -INFINITY;
      }
      float m_new = m[g];
#pragma unroll
      for (int j = 0; j < kPositionsPerPass; ++j) m_new = fmaxf(m_new, s[j]);
      const float keep = __expf(m[g] - m_new);
      sum[g] *= keep;
#pragma unroll
      for (int i = 0; i < P; ++i) acc[g][i] = make_float2(acc[g][i].x * keep, acc[g][i].y * keep);
#pragma unroll
      for (int j = 0; j < kPositionsPerPass; ++j) {
        const float w = __expf(s[j] - m_new);
        sum[g] += w;
#pragma unroll
        for (int i = 0; i < P; ++i) {
          acc[g][i].x = fmaf(w, vv[j][i].x, acc[g][i].x);
          acc[g][i].y = fmaf(w, vv[j][i].y, acc[g][i].y);
        }
      }
      m[g] = m_new;
    }
  }
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      part_m[warp * G + g] = m[g];
      part_sum[warp * G + g] = sum[g];
    }
    float* pa = part_acc + (warp * G + g) * 64 * P;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t d = 2 * lane + 64 * i;
      if (d < dh) {
        pa[d] = acc[g][i].x;
        pa[d + 1] = acc[g][i].y;
      }
    }
  }
  __syncthreads();
  // Merge, per head. A warp without positions (m = -inf, sum = 0) weighs 0; so does a block
  // without any (a split past a short row's end), whose max stays -inf. The first split's first
  // warp always has a position (len >= 1), so the final max is finite.
  bf16* out = static_cast<bf16*>(p.out);
  const int64_t slot = dh + 2;  // a head's partial: the output, then max and sum
  for (int64_t e = threadIdx.x; e < G * dh; e += blockDim.x) {
    const int g = static_cast<int>(e / dh);
    const int64_t d = e % dh;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) m_all = fmaxf(m_all, part_m[w * G + g]);
    float total = 0.0f, o = 0.0f;
    if (m_all != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarpsPerBlock; ++w) {
        const float f = __expf(part_m[w * G + g] - m_all);
        total += part_sum[w * G + g] * f;
        o += part_acc[(w * G + g) * 64 * P + d] * f;
      }
    }
    if (splits == 1) {
      out[(r * p.heads + h0 + g) * dh + d] = __float2bfloat16(o / total);
    } else {
      float* mine = ws.partial + (int64_t{blockIdx.x} * G + g) * slot;
      mine[d] = o;
      if (d == 0) {
        mine[dh] = m_all;
        mine[dh + 1] = total;
      }
    }
  }
  if (splits == 1 || !finished_last(ws.counters + unit, splits)) return;
  // The last block of the unit: the splits' partials, merged the same way.
  for (int64_t e = threadIdx.x; e < G * dh; e += blockDim.x) {
    const int g = static_cast<int>(e / dh);
    const int64_t d = e % dh;
    const float* parts = ws.partial + (unit * launch_splits * G + g) * slot;  // split s: + s G slot
    // Unrolled so the splits' loads are in flight together.
    float m_all = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) m_all = fmaxf(m_all, parts[s * G * slot + dh]);
    float total = 0.0f, o = 0.0f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) {
      const float* part = parts + s * G * slot;
      const float f = part[dh] == -INFINITY ? 0.0f : __expf(part[dh] - m_all);
      total += part[dh + 1] * f;
      o += part[d] * f;
    }
    out[(r * p.heads + h0 + g) * dh + d] = __float2bfloat16(o / total);
  }
  if (threadIdx.x == 0) ws.counters[unit] = 0;
}

// The device's SM count, asked once: every launch reads it.
int sm_count() {
  static const int count = current_device_sms();
  return count;
}

// Whether a launch splits positions: its block tables reach at least two splits' worth (no row
// has more positions than that reach). MOEX_POSITION_SPLITS=1 in the environment turns splitting
// off, with the head grouping of before (for measurements).
bool long_reach(const PagedAttentionParams& p) {
  static const bool allowed = env_count("MOEX_POSITION_SPLITS", 0) != 1;
  return allowed && p.max_blocks * p.block_size >= 2 * kMinSplitPositions;
}

// Splits per (row, head group) of a launch of `units` of them: about four blocks per SM, each
// split at least kMinSplitPositions of the tables' reach, at most kMaxSplits.
int choose_splits(const PagedAttentionParams& p, int64_t units) {
  if (p.position_splits > 0) return p.position_splits;
  if (!long_reach(p)) return 1;
  const int64_t reach = p.max_blocks * p.block_size;
  const int64_t by_sms = (4 * sm_count() + units - 1) / units;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({by_sms, reach / kMinSplitPositions, kMaxSplits})));
}

// The workspace of split launches: made at the first one large enough for any launch whose
// splits the launcher chooses (at most 8 blocks per SM, 4 units per SM, 8 heads of 256), so
// captured decode steps never see it move; a larger forced launch (tests) grows it.
SplitWorkspace split_workspace(int64_t blocks, int64_t units, int64_t slot_floats,
                               cudaStream_t stream) {
  static SplitWorkspaces workspaces("paged_attention_bf16");
  return workspaces.get(std::max<int64_t>(blocks * slot_floats, 8 * sm_count() * 8 * 258),
                        std::max<int64_t>(units, 4 * sm_count()), stream);
}

template <int P, int G>
void launch_paged_attention(const PagedAttentionParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(float) * kWarpsPerBlock * G * (64 * P + 2);
  static bool attr_set = false;  // once per instantiation: above 48 KiB needs the opt-in
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(paged_attention_kernel<P, G>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
    attr_set = true;
  }
  const int64_t units = p.rows * (p.heads / G);
  const int splits = choose_splits(p, units);
  MOEX_CHECK(units * splits < (int64_t{1} << 31), "paged_attention_bf16: ", units, " x ", splits,
             " blocks");
  const SplitWorkspace ws =
      splits > 1 ? split_workspace(units * splits, units, G * (p.head_dim + 2), stream)
                 : SplitWorkspace{};
  launch_kernel(paged_attention_kernel<P, G>, static_cast<unsigned>(units * splits),
                kWarpsPerBlock * 32, smem, stream, p, 1.0f / sqrtf(static_cast<float>(p.head_dim)),
                ws, splits);
  CUDA_CHECK(cudaGetLastError());
}

// G: the query heads of one KV head a block takes (1, 2, 4 or 8, dividing the group). The most
// the group allows, so each key and value row is read once for them, when the positions are split
// (the splits supply the blocks) or the rows alone fill the SMs; otherwise one head a block (a few
// short rows: the step is latency-bound and the group's re-reads of short rows cost little).
template <int P>
void launch_for_group(const PagedAttentionParams& p, cudaStream_t stream) {
  const int64_t group = p.heads / p.kv_heads;
  const int full = group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
  int g = p.heads_per_block;
  if (g == 0) g = long_reach(p) || p.rows * p.kv_heads >= sm_count() ? full : 1;
  MOEX_CHECK((g == 1 || g == 2 || g == 4 || g == 8) && group % g == 0,
             "paged_attention_bf16: heads_per_block must be 1, 2, 4 or 8 and divide heads / kv_heads (",
             group, "), got ", g);
  if (g == 8)
    launch_paged_attention<P, 8>(p, stream);
  else if (g == 4)
    launch_paged_attention<P, 4>(p, stream);
  else if (g == 2)
    launch_paged_attention<P, 2>(p, stream);
  else
    launch_paged_attention<P, 1>(p, stream);
}

// One thread per element (grid-stride): a step moves a few rows. kScatter: dst[index[r]] =
// src[r]; else dst[r] = src[index[r]].
template <bool kScatter>
__global__ void move_rows_kernel(const bf16* src, const int32_t* index, int64_t num_rows,
                                 int64_t width, bf16* dst) {
  wait_for_previous_kernel();
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
  launch_kernel(move_rows_kernel<kScatter>, blocks, threads, 0, stream,
                static_cast<const bf16*>(src), index, num_rows, width, static_cast<bf16*>(dst));
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void paged_attention_bf16(const PagedAttentionParams& p, cudaStream_t stream) {
  MOEX_CHECK(p.head_dim > 0 && p.head_dim <= 256 && p.head_dim % 2 == 0,
             "paged_attention_bf16: head_dim must be even and in [2, 256], got ", p.head_dim);
  MOEX_CHECK(p.heads > 0 && p.kv_heads > 0 && p.heads % p.kv_heads == 0,
             "paged_attention_bf16: heads (", p.heads, ") must be a multiple of kv_heads (",
             p.kv_heads, ")");
  if (p.rows == 0) return;
  PagedAttentionParams one_by_one = p;  // rows: how many the per-row kernel attends
  if (p.tiles != nullptr) {
    MOEX_CHECK(p.rest_rows != nullptr || p.num_rest == 0,
               "paged_attention_bf16: tiles need the list of the other rows");
    paged_attention_tiles_bf16(p, stream);
    one_by_one.rows = p.num_rest;
    if (one_by_one.rows == 0) return;
  }
  if (p.head_dim <= 64)
    launch_for_group<1>(one_by_one, stream);
  else if (p.head_dim <= 128)
    launch_for_group<2>(one_by_one, stream);
  else
    launch_for_group<4>(one_by_one, stream);
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
