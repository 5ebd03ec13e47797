#include <cuda_bf16.h>

#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/moe_mix.h"

namespace moex::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float ld(const void* p, int64_t i) {
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
__device__ __forceinline__ void st(void* p, int64_t i, float v) {
  static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(v);
}

// Sums N values over the block in a fixed order (warp shuffles, then warp 0). All threads get
// the sums.
template <int N>
__device__ void block_sum(float (&v)[N]) {
  __shared__ float red[N][kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    float x = v[j];
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (lane == 0) red[j][warp] = x;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j) {
    float x = 0;
    for (int w = 0; w < kThreads / 32; ++w) x += red[j][w];
    v[j] = x;
  }
  __syncthreads();
}

__global__ void mix_forward_kernel(MixParams p, void* y) {
  const int64_t t = blockIdx.x, d = p.d;
  const int64_t base = t * d;
  float dots[3] = {0, 0, 0};
  if (p.r != nullptr || p.ws != nullptr) {
    for (int64_t i = threadIdx.x; i < d; i += kThreads) {
      const float xv = ld(p.x, base + i);
      if (p.r != nullptr) {
        dots[0] += xv * p.wc[i];
        dots[1] += xv * p.wc[d + i];
      }
      if (p.ws != nullptr) dots[2] += xv * p.ws[i];
    }
    block_sum<3>(dots);
  }
  float c0 = 1, c1 = 0, g = 1;
  if (p.r != nullptr) {
    const float m = fmaxf(dots[0], dots[1]);
    const float e0 = expf(dots[0] - m), e1 = expf(dots[1] - m);
    c0 = e0 / (e0 + e1);
    c1 = e1 / (e0 + e1);
    if (threadIdx.x == 0) {
      p.coef[2 * t] = c0;
      p.coef[2 * t + 1] = c1;
    }
  }
  if (p.s != nullptr) {
    if (p.ws != nullptr) g = 1.0f / (1.0f + expf(-dots[2]));
    if (threadIdx.x == 0) p.gate[t] = g;
  }
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float v = ld(p.ym, base + i);
    if (p.r != nullptr) v = v * c0 + ld(p.r, base + i) * c1;
    if (p.s != nullptr) v += g * ld(p.s, base + i);
    st(y, base + i, v);
  }
}

__global__ void mix_backward_kernel(MixParams p, const void* dy, void* dym, void* dr, void* ds,
                                    float* dcl, float* dgl) {
  const int64_t t = blockIdx.x, d = p.d;
  const int64_t base = t * d;
  const float c0 = p.r != nullptr ? p.coef[2 * t] : 1.0f;
  const float c1 = p.r != nullptr ? p.coef[2 * t + 1] : 0.0f;
  const float g = p.s != nullptr ? p.gate[t] : 0.0f;
  float dots[3] = {0, 0, 0};
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    const float dv = ld(dy, base + i);
    if (p.r != nullptr) {
      st(dym, base + i, dv * c0);
      st(dr, base + i, dv * c1);
      dots[0] += dv * ld(p.ym, base + i);
      dots[1] += dv * ld(p.r, base + i);
    }
    if (p.s != nullptr) {
      st(ds, base + i, dv * g);
      if (p.ws != nullptr) dots[2] += dv * ld(p.s, base + i);
    }
  }
  if (p.r == nullptr && p.ws == nullptr) return;
  block_sum<3>(dots);
  if (threadIdx.x != 0) return;
  if (p.r != nullptr) {
    const float dot = dots[0] * c0 + dots[1] * c1;
    dcl[2 * t] = c0 * (dots[0] - dot);
    dcl[2 * t + 1] = c1 * (dots[1] - dot);
  }
  if (p.ws != nullptr) dgl[t] = dots[2] * g * (1.0f - g);
}

// grid (ceil(d / kThreads), chunks): thread = column i, rows of one chunk.
__global__ void weight_grad_partial_kernel(const float* coeff, const void* x, int64_t T, int64_t d,
                                           int n, float* partial) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (i >= d) return;
  const int64_t t0 = blockIdx.y * kMixChunk, t1 = min(T, t0 + kMixChunk);
  float a0 = 0, a1 = 0;
  for (int64_t t = t0; t < t1; ++t) {
    const float xv = ld(x, t * d + i);
    a0 += coeff[t * n] * xv;
    if (n == 2) a1 += coeff[t * n + 1] * xv;
  }
  partial[(blockIdx.y * n + 0) * d + i] = a0;
  if (n == 2) partial[(blockIdx.y * n + 1) * d + i] = a1;
}

__global__ void weight_grad_sum_kernel(const float* partial, int64_t chunks, int64_t d, int n,
                                       float* dw) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;  // over n*d
  if (j >= n * d) return;
  float acc = 0;
  for (int64_t c = 0; c < chunks; ++c) acc += partial[c * n * d + j];
  dw[j] = acc;
}

__global__ void finish_dx_kernel(__nv_bfloat16* dx, const float* dxe, const float* dcl,
                                 const float* wc, const float* dgl, const float* ws, int64_t T,
                                 int64_t d) {
  const int64_t n = T * d;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = j / d, i = j - t * d;
    float v = __bfloat162float(dx[j]);
    if (dxe != nullptr) v += dxe[j];
    if (wc != nullptr) v += dcl[2 * t] * wc[i] + dcl[2 * t + 1] * wc[d + i];
    if (ws != nullptr) v += dgl[t] * ws[i];
    dx[j] = __float2bfloat16(v);
  }
}

}  // namespace

void moe_mix_forward(const MixParams& p, void* y, cudaStream_t stream) {
  MOEX_CHECK(p.num_tokens >= 0 && p.d > 0 && p.x && p.ym, "moe_mix_forward: bad params");
  MOEX_CHECK(!p.r || (p.wc && p.coef), "moe_mix_forward: residual needs wc and coef");
  MOEX_CHECK(!p.s || p.gate, "moe_mix_forward: shared expert needs gate");
  if (p.num_tokens == 0) return;
  mix_forward_kernel<<<static_cast<unsigned>(p.num_tokens), kThreads, 0, stream>>>(p, y);
  MOEX_LAUNCH_CHECK();
}

void moe_mix_backward(const MixParams& p, const void* dy, void* dym, void* dr, void* ds, float* dcl,
                      float* dgl, cudaStream_t stream) {
  MOEX_CHECK(!p.r || (dym && dr && dcl), "moe_mix_backward: residual needs dym, dr, dcl");
  MOEX_CHECK(!p.s || ds, "moe_mix_backward: shared expert needs ds");
  MOEX_CHECK(!p.ws || dgl, "moe_mix_backward: shared gate needs dgl");
  if (p.num_tokens == 0) return;
  mix_backward_kernel<<<static_cast<unsigned>(p.num_tokens), kThreads, 0, stream>>>(p, dy, dym, dr,
                                                                                    ds, dcl, dgl);
  MOEX_LAUNCH_CHECK();
}

void mix_weight_grad(const float* coeff, const void* x, int64_t num_tokens, int64_t d, int n,
                     float* partial, float* dw, cudaStream_t stream) {
  MOEX_CHECK(n == 1 || n == 2, "mix_weight_grad: n must be 1 or 2, got ", n);
  const int64_t chunks = ceil_div(num_tokens, kMixChunk);
  if (chunks == 0) {
    CUDA_CHECK(cudaMemsetAsync(dw, 0, n * d * sizeof(float), stream));
    return;
  }
  MOEX_CHECK(chunks < 65536, "mix_weight_grad: too many tokens");
  dim3 grid(static_cast<unsigned>(ceil_div(d, kThreads)), static_cast<unsigned>(chunks));
  weight_grad_partial_kernel<<<grid, kThreads, 0, stream>>>(coeff, x, num_tokens, d, n, partial);
  MOEX_LAUNCH_CHECK();
  weight_grad_sum_kernel<<<static_cast<unsigned>(ceil_div(n * d, kThreads)), kThreads, 0, stream>>>(
      partial, chunks, d, n, dw);
  MOEX_LAUNCH_CHECK();
}

void mix_finish_dx(void* dx, const float* dxe, const float* dcl, const float* wc, const float* dgl,
                   const float* ws, int64_t num_tokens, int64_t d, cudaStream_t stream) {
  const int64_t n = num_tokens * d;
  if (n == 0) return;
  finish_dx_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      static_cast<__nv_bfloat16*>(dx), dxe, dcl, wc, dgl, ws, num_tokens, d);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
