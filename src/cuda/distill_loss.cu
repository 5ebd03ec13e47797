#include <cuda_bf16.h>

#include <cmath>

#include "cuda/block_reduce.cuh"
#include "cuda/cuda_check.h"
#include "cuda/distill_loss.h"

namespace moex::cuda {
namespace {

// Running (max, sum of exp(x - max)); merging two is exact up to rounding.
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ void fold(MaxSum& acc, float v) {
  const float m = fmaxf(acc.m, v);
  const float scale = acc.m == -INFINITY ? 0.0f : expf(acc.m - m);
  acc.s = acc.s * scale + expf(v - m);
  acc.m = m;
}

// log-sum-exp of the block's pairs, in every thread (fixed merge order: deterministic).
template <int kThreads>
__device__ __forceinline__ float block_lse(MaxSum acc) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    acc = merge(acc, MaxSum{__shfl_xor_sync(0xffffffffu, acc.m, o),
                            __shfl_xor_sync(0xffffffffu, acc.s, o)});
  __shared__ MaxSum warp_acc[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_acc[threadIdx.x / 32] = acc;
  __syncthreads();
  MaxSum total = warp_acc[0];
  for (int w = 1; w < kThreads / 32; ++w) total = merge(total, warp_acc[w]);
  __syncthreads();  // warp_acc is reused by the next call
  return total.m + logf(total.s);
}

// One block per row: a pass for both log-sum-exps, a pass for the KL sum and the gradient.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    distill_loss_kernel(const float* __restrict__ student, const float* __restrict__ teacher,
                        const int32_t* __restrict__ targets, int64_t vocab, int32_t ignore_index,
                        float inv_tau, float tau, float grad_scale, float* __restrict__ loss_rows,
                        __nv_bfloat16* __restrict__ dstudent) {
  const int64_t r = blockIdx.x;
  if (targets[r] == ignore_index) {
    if (threadIdx.x == 0) loss_rows[r] = 0.0f;
    return;  // the gradient of an ignored row is left as it is
  }
  const float* s_row = student + r * vocab;
  const float* t_row = teacher + r * vocab;
  MaxSum acc_s{-INFINITY, 0.0f}, acc_t{-INFINITY, 0.0f};
  for (int64_t c = threadIdx.x; c < vocab; c += kThreads) {
    fold(acc_s, s_row[c] * inv_tau);
    fold(acc_t, t_row[c] * inv_tau);
  }
  const float lse_s = block_lse<kThreads>(acc_s);
  const float lse_t = block_lse<kThreads>(acc_t);
  __nv_bfloat16* d_row = dstudent != nullptr ? dstudent + r * vocab : nullptr;
  float kl = 0.0f;
  for (int64_t c = threadIdx.x; c < vocab; c += kThreads) {
    const float log_pt = t_row[c] * inv_tau - lse_t;
    const float log_ps = s_row[c] * inv_tau - lse_s;
    const float pt = expf(log_pt);
    kl += pt * (log_pt - log_ps);
    if (d_row != nullptr) {
      const float g = grad_scale * tau * (expf(log_ps) - pt);
      d_row[c] = __float2bfloat16_rn(__bfloat162float(d_row[c]) + g);
    }
  }
  kl = block_sum<kThreads>(kl);
  if (threadIdx.x == 0) loss_rows[r] = tau * tau * kl;
}

}  // namespace

void distill_loss_rows(const float* student, const float* teacher, const int32_t* targets,
                       int64_t rows, int64_t vocab, int32_t ignore_index, float temperature,
                       float grad_scale, float* loss_rows, void* dstudent, cudaStream_t stream) {
  MOEX_CHECK(rows >= 0 && rows < (int64_t{1} << 31),
             "distill_loss_rows: rows must be in [0, 2^31), got ", rows);
  MOEX_CHECK(vocab > 0, "distill_loss_rows: vocab must be > 0, got ", vocab);
  MOEX_CHECK(temperature > 0, "distill_loss_rows: temperature must be > 0, got ", temperature);
  if (rows == 0) return;
  MOEX_CHECK(student && teacher && targets && loss_rows,
             "distill_loss_rows: student, teacher, targets or loss_rows is null");
  constexpr int kThreads = 256;
  distill_loss_kernel<kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      student, teacher, targets, vocab, ignore_index, 1.0f / temperature, temperature, grad_scale,
      loss_rows, static_cast<__nv_bfloat16*>(dstudent));
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
