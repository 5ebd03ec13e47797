#include "core/rng.h"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/moe_permute.h"
#include "cuda/padded_rows.cuh"
#include "moe/router.h"

namespace moex::cuda {
namespace {

constexpr int kThreads = 128;  // one block per row; 16-byte vectors

__global__ void permute_kernel(const __nv_bfloat16* __restrict__ x,
                               const int32_t* __restrict__ gather, int64_t d, int top_k,
                               __nv_bfloat16* __restrict__ xb, PaddedRows used) {
  const int64_t r = blockIdx.x;
  if (!padded_row_used(used, r)) return;
  const int q = gather[r];
  __nv_bfloat16* dst = xb + r * d;
  if (q < 0) {
    for (int64_t c = threadIdx.x * 8; c < d; c += kThreads * 8) zero_bf16x8(dst + c);
    return;
  }
  const __nv_bfloat16* src = x + static_cast<int64_t>(q / top_k) * d;
  for (int64_t c = threadIdx.x * 8; c < d; c += kThreads * 8)
    *reinterpret_cast<uint4*>(dst + c) = *reinterpret_cast<const uint4*>(src + c);
}

__global__ void combine_kernel(const __nv_bfloat16* __restrict__ ob,
                               const int32_t* __restrict__ row, const float* __restrict__ gates,
                               int64_t d, int top_k, __nv_bfloat16* __restrict__ y) {
  wait_for_previous_kernel();
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x * 8; c < d; c += kThreads * 8) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < top_k; ++j) {
      const int rw = row[t * top_k + j];
      if (rw < 0) continue;
      const float g = gates[t * top_k + j];
      float v[8];
      load_bf16x8(ob + static_cast<int64_t>(rw) * d + c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += g * v[i];
    }
    store_bf16x8(y + t * d + c, acc);
  }
}

__global__ void combine_backward_kernel(const __nv_bfloat16* __restrict__ dy,
                                        const __nv_bfloat16* __restrict__ ob,
                                        const int32_t* __restrict__ gather,
                                        const float* __restrict__ gates, int64_t d, int top_k,
                                        __nv_bfloat16* __restrict__ dob, float* __restrict__ dgates,
                                        PaddedRows used) {
  const int64_t r = blockIdx.x;
  if (!padded_row_used(used, r)) return;
  const int q = gather[r];
  __nv_bfloat16* dst = dob + r * d;
  if (q < 0) {
    for (int64_t c = threadIdx.x * 8; c < d; c += kThreads * 8) zero_bf16x8(dst + c);
    return;
  }
  const float g = gates[q];
  const __nv_bfloat16* dyt = dy + static_cast<int64_t>(q / top_k) * d;
  const __nv_bfloat16* obr = ob + r * d;
  float dot = 0.0f;
  for (int64_t c = threadIdx.x * 8; c < d; c += kThreads * 8) {
    float a[8], b[8];
    load_bf16x8(dyt + c, a);
    load_bf16x8(obr + c, b);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      dot += a[i] * b[i];
      a[i] *= g;
    }
    store_bf16x8(dst + c, a);
  }
  // Fixed-order block reduction (deterministic).
  __shared__ float s_warp[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) total += s_warp[w];
    dgates[q] = total;
  }
}

__global__ void permute_backward_kernel(const __nv_bfloat16* __restrict__ dxb,
                                        const int32_t* __restrict__ row,
                                        const float* __restrict__ dxj, int64_t d, int top_k,
                                        float eps, uint64_t seed, uint64_t stream,
                                        __nv_bfloat16* __restrict__ dx) {
  const int64_t t = blockIdx.x;
  for (int64_t c = threadIdx.x * 8; c < d; c += kThreads * 8) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < top_k; ++j) {
      const int rw = row[t * top_k + j];
      if (rw < 0) continue;
      float v[8];
      load_bf16x8(dxb + static_cast<int64_t>(rw) * d + c, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += v[i];
    }
    if (dxj != nullptr) {
      const float4 a = *reinterpret_cast<const float4*>(dxj + t * d + c);
      const float4 b = *reinterpret_cast<const float4*>(dxj + t * d + c + 4);
      float g[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float u = 1.0f;
        if (eps > 0.0f) {
          const float draw = philox_uniform(seed, stream, static_cast<uint64_t>(t * d + c + i));
          u = __fadd_rn(__fsub_rn(1.0f, eps), __fmul_rn(__fmul_rn(2.0f, eps), draw));
        }
        acc[i] += g[i] * u;
      }
    }
    store_bf16x8(dx + t * d + c, acc);
  }
}

void check_rows(const void* p, int64_t d, const char* what) {
  MOEX_CHECK(d % 8 == 0, what, ": hidden size ", d, " must be a multiple of 8");
  MOEX_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, what, ": pointer not 16-byte aligned");
}

}  // namespace

void moe_permute(const void* x, const int32_t* gather, int64_t num_rows, int64_t d, int top_k,
                 void* xb, cudaStream_t stream, const PaddedRows& used) {
  check_rows(x, d, "moe_permute");
  check_rows(xb, d, "moe_permute");
  if (num_rows == 0) return;
  permute_kernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(x), gather, d, top_k, static_cast<__nv_bfloat16*>(xb),
      used);
  MOEX_LAUNCH_CHECK();
}

void moe_combine(const void* ob, const int32_t* row, const float* gates, int64_t num_tokens,
                 int64_t d, int top_k, void* y, cudaStream_t stream) {
  check_rows(ob, d, "moe_combine");
  check_rows(y, d, "moe_combine");
  if (num_tokens == 0) return;
  launch_kernel(combine_kernel, static_cast<unsigned>(num_tokens), kThreads, 0, stream,
                static_cast<const __nv_bfloat16*>(ob), row, gates, d, top_k,
                static_cast<__nv_bfloat16*>(y));
  MOEX_LAUNCH_CHECK();
}

void moe_combine_backward(const void* dy, const void* ob, const int32_t* gather, const float* gates,
                          int64_t num_rows, int64_t d, int top_k, void* dob, float* dgates,
                          cudaStream_t stream, const PaddedRows& used) {
  check_rows(dy, d, "moe_combine_backward");
  check_rows(ob, d, "moe_combine_backward");
  check_rows(dob, d, "moe_combine_backward");
  if (num_rows == 0) return;
  combine_backward_kernel<<<static_cast<unsigned>(num_rows), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(dy), static_cast<const __nv_bfloat16*>(ob), gather, gates,
      d, top_k, static_cast<__nv_bfloat16*>(dob), dgates, used);
  MOEX_LAUNCH_CHECK();
}

void moe_permute_backward(const void* dxb, const int32_t* row, const float* dxj, int64_t num_tokens,
                          int64_t d, int top_k, float jitter_eps, uint64_t seed, uint64_t offset,
                          void* dx, cudaStream_t stream) {
  check_rows(dxb, d, "moe_permute_backward");
  check_rows(dx, d, "moe_permute_backward");
  if (num_tokens == 0) return;
  permute_backward_kernel<<<static_cast<unsigned>(num_tokens), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(dxb), row, dxj, d, top_k, jitter_eps, seed,
      moe::moe_rng_offset(offset, moe::MoERngUse::kJitter), static_cast<__nv_bfloat16*>(dx));
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
