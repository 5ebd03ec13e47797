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

// The block's pairs merged, in every thread (fixed merge order: deterministic).
template <int kThreads>
__device__ __forceinline__ MaxSum block_max_sum(MaxSum acc) {
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
  return total;
}

// The block's row of student / tau and teacher / tau folded into (max, sum) pairs.
template <int kThreads>
__device__ __forceinline__ void row_max_sums(const float* s_row, const float* t_row, int64_t vocab,
                                             float inv_tau, MaxSum& s, MaxSum& t) {
  MaxSum acc_s{-INFINITY, 0.0f}, acc_t{-INFINITY, 0.0f};
  for (int64_t c = threadIdx.x; c < vocab; c += kThreads) {
    fold(acc_s, s_row[c] * inv_tau);
    fold(acc_t, t_row[c] * inv_tau);
  }
  s = block_max_sum<kThreads>(acc_s);
  t = block_max_sum<kThreads>(acc_t);
}

// One block per row: a pass for both log-sum-exps (or the whole rows' from lse [rows, 2] when
// the columns are a vocabulary slice), a pass for the KL sum and the gradient.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    distill_loss_kernel(const float* __restrict__ student, const float* __restrict__ teacher,
                        const int32_t* __restrict__ targets, int64_t vocab, int32_t ignore_index,
                        float inv_tau, float tau, float grad_scale, const double* __restrict__ lse,
                        float* __restrict__ loss_rows, __nv_bfloat16* __restrict__ dstudent) {
  const int64_t r = blockIdx.x;
  if (targets[r] == ignore_index) {
    if (threadIdx.x == 0) loss_rows[r] = 0.0f;
    return;  // the gradient of an ignored row is left as it is
  }
  const float* s_row = student + r * vocab;
  const float* t_row = teacher + r * vocab;
  float lse_s, lse_t;
  if (lse != nullptr) {
    lse_s = static_cast<float>(lse[2 * r]);
    lse_t = static_cast<float>(lse[2 * r + 1]);
  } else {
    MaxSum s, t;
    row_max_sums<kThreads>(s_row, t_row, vocab, inv_tau, s, t);
    lse_s = s.m + logf(s.s);
    lse_t = t.m + logf(t.s);
  }
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

// One block per row: stats[r] = (max, sum) of student / tau, then of teacher / tau.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    distill_stats_kernel(const float* __restrict__ student, const float* __restrict__ teacher,
                         int64_t vocab, float inv_tau, float* __restrict__ stats) {
  const int64_t r = blockIdx.x;
  MaxSum s, t;
  row_max_sums<kThreads>(student + r * vocab, teacher + r * vocab, vocab, inv_tau, s, t);
  if (threadIdx.x == 0) {
    stats[4 * r] = s.m;
    stats[4 * r + 1] = s.s;
    stats[4 * r + 2] = t.m;
    stats[4 * r + 3] = t.s;
  }
}

constexpr int kThreads = 256;

void check_rows(const char* what, int64_t rows, int64_t vocab, float temperature) {
  MOEX_CHECK(rows >= 0 && rows < (int64_t{1} << 31), what, ": rows must be in [0, 2^31), got ",
             rows);
  MOEX_CHECK(vocab > 0, what, ": vocab must be > 0, got ", vocab);
  MOEX_CHECK(temperature > 0, what, ": temperature must be > 0, got ", temperature);
}

}  // namespace

void distill_stats_rows(const float* student, const float* teacher, int64_t rows, int64_t vocab,
                        float temperature, float* stats, cudaStream_t stream) {
  check_rows("distill_stats_rows", rows, vocab, temperature);
  if (rows == 0) return;
  distill_stats_kernel<kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      student, teacher, vocab, 1.0f / temperature, stats);
  MOEX_LAUNCH_CHECK();
}

void distill_loss_rows(const float* student, const float* teacher, const int32_t* targets,
                       int64_t rows, int64_t vocab, int32_t ignore_index, float temperature,
                       float grad_scale, const double* lse, float* loss_rows, void* dstudent,
                       cudaStream_t stream) {
  check_rows("distill_loss_rows", rows, vocab, temperature);
  if (rows == 0) return;
  MOEX_CHECK(student && teacher && targets && loss_rows,
             "distill_loss_rows: student, teacher, targets or loss_rows is null");
  distill_loss_kernel<kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      student, teacher, targets, vocab, ignore_index, 1.0f / temperature, temperature, grad_scale,
      lse, loss_rows, static_cast<__nv_bfloat16*>(dstudent));
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
