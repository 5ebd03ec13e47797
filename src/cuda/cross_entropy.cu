#include <cuda_bf16.h>

#include <cmath>

#include "cuda/bf16_chunk.cuh"
#include "cuda/cross_entropy.h"
#include "cuda/cuda_check.h"

namespace moex::cuda {
namespace {

constexpr int kBatch = 4;

// Running (max, sum of exp(x - max)) of a set of logits; merging two is exact up to rounding.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};  // both empty
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Folds 4 logits into the running pair: one rescale per 4 values, not per value.
__device__ __forceinline__ void fold4(MaxSum& acc, float4 v) {
  const float m = fmaxf(fmaxf(acc.m, v.x), fmaxf(fmaxf(v.y, v.z), v.w));
  const float scale = acc.m == -INFINITY ? 0.0f : expf(acc.m - m);
  acc.s = acc.s * scale + expf(v.x - m) + expf(v.y - m) + expf(v.z - m) + expf(v.w - m);
  acc.m = m;
}

__device__ __forceinline__ void fold1(MaxSum& acc, float v) {
  const float m = fmaxf(acc.m, v);
  const float scale = acc.m == -INFINITY ? 0.0f : expf(acc.m - m);
  acc.s = acc.s * scale + expf(v - m);
  acc.m = m;
}

// What one launch reads and writes. The row holds columns [vocab_begin, vocab_begin + vocab) of
// the vocabulary (0 and the whole vocabulary, except under tensor parallelism).
struct RowsParams {
  const float* logits;
  const int32_t* targets;
  int64_t vocab, vocab_begin;
  int32_t ignore_index;
  float grad_scale;
  float* loss_rows;        // [rows] loss, or null
  float* stats;            // [rows, 3] (max, sum of exp(x - max), target logit here or 0), or null
  const float* lse;        // [rows] the whole row's logsumexp, given: no reduction; or null
  __nv_bfloat16* dlogits;  // [rows, vocab] gradient, or null
};

// One block per row: an online max/sum pass reads the row once, the gradient pass reads it again
// (mostly from L2: a 32k-vocab fp32 row is 128 KB). kVec4: vocab % 4 == 0 and 16-byte aligned rows.
template <int kThreads, bool kVec4>
__global__ void __launch_bounds__(kThreads) cross_entropy_kernel(RowsParams p) {
  const int64_t r = blockIdx.x, vocab = p.vocab;
  const float* row = p.logits + r * vocab;
  const int32_t target = p.targets[r];
  const float grad_scale = p.grad_scale;
  // The target's column in this row; outside [0, vocab) when another part holds it.
  const int64_t local = static_cast<int64_t>(target) - p.vocab_begin;
  __nv_bfloat16* drow = p.dlogits != nullptr ? p.dlogits + r * vocab : nullptr;
  if (target == p.ignore_index) {
    if (threadIdx.x == 0 && p.loss_rows != nullptr) p.loss_rows[r] = 0.0f;
    if (threadIdx.x < 3 && p.stats != nullptr) p.stats[3 * r + threadIdx.x] = 0.0f;
    if (drow != nullptr) {
      const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
      for (int64_t c = threadIdx.x; c < vocab; c += kThreads) drow[c] = zero;
    }
    return;
  }
  __shared__ float lse_shared;
  if (p.lse != nullptr) {
    if (threadIdx.x == 0) lse_shared = p.lse[r];
  } else {
    MaxSum acc{-INFINITY, 0.0f};
    if constexpr (kVec4) {
      // kBatch loads in flight before the dependent folds.
      const float4* row4 = reinterpret_cast<const float4*>(row);
      const int64_t n4 = vocab / 4;
      int64_t c = threadIdx.x;
      for (; c + (kBatch - 1) * kThreads < n4; c += kBatch * kThreads) {
        float4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) v[u] = row4[c + u * kThreads];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) fold4(acc, v[u]);
    }
    for (; c < n4; c += kThreads) fold4(acc, row4[c]);
  } else {
    for (int64_t c = threadIdx.x; c < vocab; c += kThreads) fold1(acc, row[c]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.m, o),
                       __shfl_xor_sync(0xffffffffu, acc.s, o)};
    acc = merge(acc, other);
  }
  __shared__ MaxSum warp_acc[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_acc[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum total = warp_acc[0];
    for (int w = 1; w < kThreads / 32; ++w) total = merge(total, warp_acc[w]);
    const float lse = total.m + logf(total.s);
    lse_shared = lse;
    const bool here = local >= 0 && local < vocab;
    if (p.loss_rows != nullptr) p.loss_rows[r] = lse - row[local];
    if (p.stats != nullptr) {
      p.stats[3 * r] = total.m;
      p.stats[3 * r + 1] = total.s;
      p.stats[3 * r + 2] = here ? row[local] : 0.0f;
    }
  }
  }
  if (drow == nullptr) return;
  __syncthreads();
  const float lse = lse_shared;
  // grad_scale * (softmax - onehot); the target column is fixed up in the same pass.
  if constexpr (kVec4) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
#pragma unroll 4
    for (int64_t c = threadIdx.x; c < vocab / 4; c += kThreads) {
      const float4 v = row4[c];
      float g[4] = {grad_scale * expf(v.x - lse), grad_scale * expf(v.y - lse),
                    grad_scale * expf(v.z - lse), grad_scale * expf(v.w - lse)};
      const int64_t t = local - 4 * c;
      if (t >= 0 && t < 4) g[t] -= grad_scale;
      __nv_bfloat162 out[2] = {__floats2bfloat162_rn(g[0], g[1]),
                               __floats2bfloat162_rn(g[2], g[3])};
      *reinterpret_cast<uint2*>(drow + 4 * c) = *reinterpret_cast<const uint2*>(out);
    }
  } else {
    for (int64_t c = threadIdx.x; c < vocab; c += kThreads) {
      float g = grad_scale * expf(row[c] - lse);
      if (c == local) g -= grad_scale;
      drow[c] = __float2bfloat16_rn(g);
    }
  }
}

template <int kThreads>
void launch(bool vec4, const RowsParams& p, int64_t rows, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(rows);
  if (vec4) {
    cross_entropy_kernel<kThreads, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    cross_entropy_kernel<kThreads, false><<<grid, kThreads, 0, stream>>>(p);
  }
  MOEX_LAUNCH_CHECK();
}

void run_rows(const RowsParams& p, int64_t rows, cudaStream_t stream) {
  MOEX_CHECK(rows >= 0 && rows < (int64_t{1} << 31), "cross_entropy_rows: rows must be in "
             "[0, 2^31), got ", rows);
  MOEX_CHECK(p.vocab > 0, "cross_entropy_rows: vocab must be > 0, got ", p.vocab);
  if (rows == 0) return;
  MOEX_CHECK(p.logits && p.targets, "cross_entropy_rows: logits or targets is null");
  // dlogits rows of 4 bf16 are 8-byte stores: vocab % 4 == 0 keeps each row 8-byte aligned.
  const bool vec4 = p.vocab % 4 == 0 && aligned16(p.logits) &&
                    (p.dlogits == nullptr || reinterpret_cast<uintptr_t>(p.dlogits) % 8 == 0);
  if (p.vocab >= 8192) {
    launch<512>(vec4, p, rows, stream);
  } else {
    launch<128>(vec4, p, rows, stream);
  }
}

}  // namespace

void cross_entropy_rows(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                        int32_t ignore_index, float grad_scale, float* loss_rows, void* dlogits,
                        cudaStream_t stream) {
  MOEX_CHECK(rows == 0 || loss_rows != nullptr, "cross_entropy_rows: loss_rows is null");
  run_rows(RowsParams{logits, targets, vocab, 0, ignore_index, grad_scale, loss_rows, nullptr,
                      nullptr, static_cast<__nv_bfloat16*>(dlogits)},
           rows, stream);
}

void cross_entropy_partial_stats(const float* logits, const int32_t* targets, int64_t rows,
                                 int64_t vocab, int64_t vocab_begin, int32_t ignore_index,
                                 float* stats, cudaStream_t stream) {
  MOEX_CHECK(rows == 0 || stats != nullptr, "cross_entropy_partial_stats: stats is null");
  run_rows(RowsParams{logits, targets, vocab, vocab_begin, ignore_index, 0.0f, nullptr, stats,
                      nullptr, nullptr},
           rows, stream);
}

void cross_entropy_partial_grad(const float* logits, const int32_t* targets, const float* lse,
                                int64_t rows, int64_t vocab, int64_t vocab_begin,
                                int32_t ignore_index, float grad_scale, void* dlogits,
                                cudaStream_t stream) {
  MOEX_CHECK(rows == 0 || (lse != nullptr && dlogits != nullptr),
             "cross_entropy_partial_grad: lse or dlogits is null");
  run_rows(RowsParams{logits, targets, vocab, vocab_begin, ignore_index, grad_scale, nullptr,
                      nullptr, lse, static_cast<__nv_bfloat16*>(dlogits)},
           rows, stream);
}

}  // namespace moex::cuda
