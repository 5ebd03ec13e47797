#include "cuda/router_gemm.h"

#include <algorithm>

#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device.h"

namespace moex::cuda {
namespace {

constexpr int kTokensPerWarp = 4;   // logits: tokens a warp takes together (each w load serves 4)
constexpr int kChunkTokens = 64;    // weight gradient: tokens summed into one partial
constexpr int kColumnThreads = 128;  // weight gradient: threads of a block, 4 columns each

__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float dot4(float acc, float4 a, float4 b) {
  return fmaf(a.w, b.w, fmaf(a.z, b.z, fmaf(a.y, b.y, fmaf(a.x, b.x, acc))));
}

// One warp per kTokensPerWarp tokens: lane l reads columns [4l, 4l + 4) of every 128, of each
// token and of each expert's weight row (from L1: w is a few tens of KB), and keeps E partial
// dot products per token; a butterfly of shuffles then sums the 32 lanes' partials.
template <int kE>
__global__ void __launch_bounds__(256)
    router_logits_kernel(const float* __restrict__ xj, const float* __restrict__ w, int64_t T,
                         int64_t d, int E, float* __restrict__ z) {
  const int lane = threadIdx.x & 31;
  const int64_t t0 = ((int64_t{blockIdx.x} * blockDim.x + threadIdx.x) >> 5) * kTokensPerWarp;
  if (t0 >= T) return;  // the whole warp: t0 is the warp's
  float acc[kTokensPerWarp][kE];
#pragma unroll
  for (int j = 0; j < kTokensPerWarp; ++j)
#pragma unroll
    for (int e = 0; e < kE; ++e) acc[j][e] = 0.0f;
  for (int64_t c = lane * 4; c < d; c += 128) {
    float4 x[kTokensPerWarp];
#pragma unroll
    for (int j = 0; j < kTokensPerWarp; ++j)
      x[j] = t0 + j < T ? load4(xj + (t0 + j) * d + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      if (e >= E) break;
      const float4 wv = __ldg(reinterpret_cast<const float4*>(w + e * d + c));
#pragma unroll
      for (int j = 0; j < kTokensPerWarp; ++j) acc[j][e] = dot4(acc[j][e], x[j], wv);
    }
  }
#pragma unroll
  for (int j = 0; j < kTokensPerWarp; ++j) {
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      float v = acc[j][e];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && e < E && t0 + j < T) z[(t0 + j) * E + e] = v;
    }
  }
}

// Block (p, y): the tokens of chunk p, columns [4 (128 y + thread), +4): partial[p, e, columns]
// = sum over the chunk's tokens, in order, of dz[t, e] xj[t, columns].
template <int kE>
__global__ void __launch_bounds__(kColumnThreads)
    router_weight_partial_kernel(const float* __restrict__ dz, const float* __restrict__ xj,
                                 int64_t T, int64_t d, int E, float* __restrict__ partial) {
  __shared__ float dz_chunk[kChunkTokens][kE];
  const int64_t begin = int64_t{blockIdx.x} * kChunkTokens;
  const int count = static_cast<int>(min(int64_t{kChunkTokens}, T - begin));
  for (int i = threadIdx.x; i < kChunkTokens * kE; i += blockDim.x) {
    const int t = i / kE, e = i % kE;
    dz_chunk[t][e] = t < count && e < E ? dz[(begin + t) * E + e] : 0.0f;
  }
  __syncthreads();
  const int64_t c = (int64_t{blockIdx.y} * blockDim.x + threadIdx.x) * 4;
  if (c >= d) return;
  float4 acc[kE];
#pragma unroll
  for (int e = 0; e < kE; ++e) acc[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int t = 0; t < count; ++t) {
    const float4 x = load4(xj + (begin + t) * d + c);
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      const float g = dz_chunk[t][e];
      acc[e] = make_float4(fmaf(g, x.x, acc[e].x), fmaf(g, x.y, acc[e].y), fmaf(g, x.z, acc[e].z),
                           fmaf(g, x.w, acc[e].w));
    }
  }
#pragma unroll
  for (int e = 0; e < kE; ++e)
    if (e < E)
      *reinterpret_cast<float4*>(partial + (int64_t{blockIdx.x} * E + e) * d + c) = acc[e];
}

// dw[i] = the chunks' partials of element i, summed in chunk order.
__global__ void router_weight_reduce_kernel(const float* __restrict__ partial, int64_t parts,
                                            int64_t n, float* __restrict__ dw) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float sum = 0.0f;
  for (int64_t p = 0; p < parts; ++p) sum += partial[p * n + i];
  dw[i] = sum;
}

// A block per token (grid-stride over tokens), 4 columns a thread: dxj = sum over e, in order, of
// dz[t, e] w[e, columns].
template <int kE>
__global__ void router_input_grad_kernel(const float* __restrict__ dz, const float* __restrict__ w,
                                         int64_t T, int64_t d, int E, float* __restrict__ dxj) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float g[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) g[e] = e < E ? __ldg(dz + t * E + e) : 0.0f;
    for (int64_t c = threadIdx.x * 4; c < d; c += int64_t{blockDim.x} * 4) {
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        if (e >= E) break;
        const float4 wv = __ldg(reinterpret_cast<const float4*>(w + e * d + c));
        acc = make_float4(fmaf(g[e], wv.x, acc.x), fmaf(g[e], wv.y, acc.y),
                          fmaf(g[e], wv.z, acc.z), fmaf(g[e], wv.w, acc.w));
      }
      *reinterpret_cast<float4*>(dxj + t * d + c) = acc;
    }
  }
}

// Runs f with the accumulator width for E experts (8 or 16).
template <typename F>
void with_width(int E, F&& f) {
  if (E <= 8)
    f(std::integral_constant<int, 8>());
  else
    f(std::integral_constant<int, kRouterGemmMaxExperts>());
}

void check_fits(const char* op, int64_t d, int E, const void* a, const void* b, const void* c) {
  MOEX_CHECK(router_gemm_fits(d, E, a, b, c), op, ": d = ", d, " and E = ", E,
             " need d % 4 == 0, 1 <= E <= ", kRouterGemmMaxExperts, " and 16-byte aligned rows");
}

}  // namespace

bool router_gemm_fits(int64_t d, int num_experts, const void* xj, const void* w, const void* out) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return num_experts >= 1 && num_experts <= kRouterGemmMaxExperts && d > 0 && d % 4 == 0 &&
         aligned(xj) && aligned(w) && aligned(out);
}

void router_logits_f32(const float* xj, const float* w, int64_t num_tokens, int64_t d,
                       int num_experts, float* z, cudaStream_t stream) {
  check_fits("router_logits_f32", d, num_experts, xj, w, z);
  if (num_tokens == 0) return;
  constexpr int kThreads = 256, kTokensPerBlock = kThreads / 32 * kTokensPerWarp;
  const auto blocks = static_cast<unsigned>(ceil_div(num_tokens, kTokensPerBlock));
  with_width(num_experts, [&](auto width) {
    router_logits_kernel<decltype(width)::value>
        <<<blocks, kThreads, 0, stream>>>(xj, w, num_tokens, d, num_experts, z);
  });
  MOEX_LAUNCH_CHECK();
}

int64_t router_weight_grad_partial_floats(int64_t num_tokens, int64_t d, int num_experts) {
  return std::max<int64_t>(ceil_div(num_tokens, kChunkTokens), 1) * num_experts * d;
}

void router_weight_grad_f32(const float* dz, const float* xj, int64_t num_tokens, int64_t d,
                            int num_experts, float* partial, float* dw, cudaStream_t stream) {
  check_fits("router_weight_grad_f32", d, num_experts, xj, partial, xj);
  const int64_t n = num_experts * d;
  if (num_tokens == 0) {
    CUDA_CHECK(cudaMemsetAsync(dw, 0, static_cast<size_t>(n) * sizeof(float), stream));
    return;
  }
  const int64_t parts = ceil_div(num_tokens, kChunkTokens);
  const dim3 grid(static_cast<unsigned>(parts),
                  static_cast<unsigned>(ceil_div(d / 4, kColumnThreads)));
  with_width(num_experts, [&](auto width) {
    router_weight_partial_kernel<decltype(width)::value>
        <<<grid, kColumnThreads, 0, stream>>>(dz, xj, num_tokens, d, num_experts, partial);
  });
  MOEX_LAUNCH_CHECK();
  router_weight_reduce_kernel<<<static_cast<unsigned>(ceil_div(n, 256)), 256, 0, stream>>>(
      partial, parts, n, dw);
  MOEX_LAUNCH_CHECK();
}

void router_input_grad_f32(const float* dz, const float* w, int64_t num_tokens, int64_t d,
                           int num_experts, float* dxj, cudaStream_t stream) {
  check_fits("router_input_grad_f32", d, num_experts, dxj, w, dxj);
  if (num_tokens == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, d / 4)));
  const auto blocks =
      static_cast<unsigned>(std::min<int64_t>(num_tokens, int64_t{current_device_sms()} * 16));
  with_width(num_experts, [&](auto width) {
    router_input_grad_kernel<decltype(width)::value>
        <<<blocks, threads, 0, stream>>>(dz, w, num_tokens, d, num_experts, dxj);
  });
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
