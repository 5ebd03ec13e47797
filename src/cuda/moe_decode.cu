#include <algorithm>

#include "core/error.h"
#include "cuda/activation_math.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/few_rows_mma.cuh"
#include "cuda/moe_decode.h"

namespace moex::cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32;
// Routed rows handled per pass over a weight row: every weight element loaded is used this many
// times from registers; more rows take another pass (the weight rows come back from L2).
constexpr int kGroup = 8;
// Blocks per SM the grid aims at (more than fit at once: the rest queue): with the weight loads
// unrolled kUnroll deep, enough bytes in flight to keep HBM busy when one or two experts are
// selected.
constexpr int kBlocksPerSm = 8;

enum Kind { kUpSwiGLU, kUpGelu, kDown };

struct KernelArgs {
  const __nv_bfloat16* in;  // up: x [T, d]; down: a [E*T, F]
  const int32_t* gather;
  const int32_t* counts;
  const int32_t* info;
  const __nv_bfloat16* w;  // up: w1 [E, F1, d]; down: w2 [E, d, F]
  __nv_bfloat16* out;      // up: a [E*T, F]; down: out [E*T, d]
  int64_t k_dim;           // reduction length: d (up) or F (down)
  int64_t positions;       // outputs per row: F (up) or d (down)
  int64_t w_rows;          // weight rows per expert: F1 (up) or d (down)
  int top_k;
  int num_experts;
  bool gelu_exact;
};

// Weights are read once: they are streamed past L1 (__ldcs) so the routed input rows stay there.
constexpr int kUnroll = 4;

__device__ __forceinline__ void unpack_bf16x8(const uint4& raw, float (&out)[8]) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// Grid: x splits an expert's units, y is a slot: slot y serves the y-th expert with routes (in
// expert order), so only selected experts get blocks. There are min(E, T * k) slots, the most
// experts T tokens can select.
// One warp per "unit": a pair of weight rows of the slot's expert e and the outputs they make.
//   kUpSwiGLU: rows j (gate) and F + j (up) -> a[row, j] = silu(g) * u
//   kUpGelu:   rows 2u, 2u + 1             -> a[row, 2u..2u+1] = gelu(h)
//   kDown:     rows 2u, 2u + 1 of w2       -> out[row, 2u..2u+1]
// Each lane covers 8 consecutive reduction elements per 256, the warp sums at the end.
template <int kKind>
__global__ void __launch_bounds__(kThreads) decode_expert_kernel(KernelArgs p) {
  __shared__ int src[kMaxDecodeCapacity];  // input row of each routed row
  __shared__ int dst[kMaxDecodeCapacity];  // output row of each routed row
  __shared__ int num_rows, expert;
  if (threadIdx.x == 0) {
    int e = -1;
    for (int i = 0, seen = 0; i < p.num_experts; ++i)
      if (p.counts[i] > 0 && seen++ == static_cast<int>(blockIdx.y)) {
        e = i;
        break;
      }
    expert = e;
  }
  __syncthreads();
  const int e = expert;
  if (e < 0) return;  // fewer experts selected than slots; the same for the whole block
  const int C = p.info[0];
  if (threadIdx.x == 0) {
    int n = 0;
    for (int s = 0; s < C && n < kMaxDecodeCapacity; ++s) {
      const int row = e * C + s, route = p.gather[row];
      if (route < 0) continue;
      src[n] = kKind == kDown ? row : route / p.top_k;
      dst[n] = row;
      ++n;
    }
    num_rows = n;
  }
  __syncthreads();
  const int n = num_rows, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t units = kKind == kUpSwiGLU ? p.positions : p.positions / 2;
  for (int64_t unit = int64_t{blockIdx.x} * kWarps + warp; unit < units;
       unit += int64_t{gridDim.x} * kWarps) {
    const int64_t r0 = kKind == kUpSwiGLU ? unit : 2 * unit;
    const int64_t r1 = kKind == kUpSwiGLU ? unit + p.positions : 2 * unit + 1;
    const __nv_bfloat16* w0 = p.w + (int64_t{e} * p.w_rows + r0) * p.k_dim;
    const __nv_bfloat16* w1 = p.w + (int64_t{e} * p.w_rows + r1) * p.k_dim;
    for (int g0 = 0; g0 < n; g0 += kGroup) {
      const int ng = min(kGroup, n - g0);
      float acc0[kGroup], acc1[kGroup];
#pragma unroll
      for (int t = 0; t < kGroup; ++t) acc0[t] = acc1[t] = 0.0f;
      // kUnroll reduction steps at a time: every weight load of the pass is issued before the
      // first multiply, so each lane keeps 2 * kUnroll 16-byte loads in flight.
      for (int64_t k0 = lane * 8; k0 < p.k_dim; k0 += 256 * kUnroll) {
        uint4 ra[kUnroll], rb[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t k = k0 + 256 * u;
          ra[u] =
              k < p.k_dim ? __ldcs(reinterpret_cast<const uint4*>(w0 + k)) : make_uint4(0, 0, 0, 0);
          rb[u] =
              k < p.k_dim ? __ldcs(reinterpret_cast<const uint4*>(w1 + k)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t k = k0 + 256 * u;
          if (k >= p.k_dim) break;
          float a[8], b[8];
          unpack_bf16x8(ra[u], a);
          unpack_bf16x8(rb[u], b);
#pragma unroll
          for (int t = 0; t < kGroup; ++t) {
            if (t >= ng) break;
            float x[8];
            load_bf16x8(p.in + int64_t{src[g0 + t]} * p.k_dim + k, x);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              acc0[t] = fmaf(a[i], x[i], acc0[t]);
              acc1[t] = fmaf(b[i], x[i], acc1[t]);
            }
          }
        }
      }
#pragma unroll
      for (int t = 0; t < kGroup; ++t) {
        if (t >= ng) break;
        const float h0 = warp_sum(acc0[t]), h1 = warp_sum(acc1[t]);
        if (lane != t) continue;  // lane t writes routed row g0 + t
        const int64_t row = dst[g0 + t];
        if (kKind == kUpSwiGLU) {
          const float g = round_bf16(h0), u = round_bf16(h1);
          p.out[row * p.positions + unit] = __float2bfloat16(g * sigmoid(g) * u);
        } else if (kKind == kUpGelu) {
          p.out[row * p.positions + r0] = __float2bfloat16(gelu(round_bf16(h0), p.gelu_exact));
          p.out[row * p.positions + r1] = __float2bfloat16(gelu(round_bf16(h1), p.gelu_exact));
        } else {
          p.out[row * p.positions + r0] = __float2bfloat16(h0);
          p.out[row * p.positions + r1] = __float2bfloat16(h1);
        }
      }
    }
  }
}

// Tensor-core twin of decode_expert_kernel (cuda/few_rows_mma.cuh): the same grid of slots and
// row lists; a block computes one unit of 32 weight rows against every routed row of its expert,
// 8 * kNT rows per pass over the weights. A unit is SwiGLU gate rows 16u.. with the matching up
// rows F + 16u.. (so one lane holds both halves of an output), otherwise rows 32u..32u+31.
template <int kKind, int kNT>
__global__ void __launch_bounds__(kFewRowsThreads) decode_expert_mma_kernel(KernelArgs p) {
  __shared__ int src[kMaxDecodeCapacity];
  __shared__ int dst[kMaxDecodeCapacity];
  __shared__ int num_rows, expert;
  __shared__ FewRowsSmem<kNT> smem;
  if (threadIdx.x == 0) {
    int e = -1;
    for (int i = 0, seen = 0; i < p.num_experts; ++i)
      if (p.counts[i] > 0 && seen++ == static_cast<int>(blockIdx.y)) {
        e = i;
        break;
      }
    expert = e;
    if (e >= 0) {
      const int C = p.info[0];
      int n = 0;
      for (int s = 0; s < C && n < kMaxDecodeCapacity; ++s) {
        const int row = e * C + s, route = p.gather[row];
        if (route < 0) continue;
        src[n] = kKind == kDown ? row : route / p.top_k;
        dst[n] = row;
        ++n;
      }
      num_rows = n;
    }
  }
  __syncthreads();
  const int e = expert;
  if (e < 0) return;  // fewer experts selected than slots; the same for the whole block
  const int n = num_rows, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t K = p.k_dim;
  const int64_t units = kKind == kUpSwiGLU ? (p.positions + 15) / 16 : (p.positions + 31) / 32;
  // Weight row of m-tile m, half h, clamped into the matrix (clamped rows' outputs are dropped).
  auto weight_row = [&](int64_t unit, int m, int h) {
    int64_t r = kKind == kUpSwiGLU ? unit * 16 + g + 8 * h : unit * 32 + 16 * m + g + 8 * h;
    r = min(r, p.positions - 1);
    if (kKind == kUpSwiGLU && m == 1) r += p.positions;
    return p.w + (int64_t{e} * p.w_rows + r) * K;
  };
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    const __nv_bfloat16* const wr[4] = {weight_row(unit, 0, 0), weight_row(unit, 0, 1),
                                        weight_row(unit, 1, 0), weight_row(unit, 1, 1)};
    for (int g0 = 0; g0 < n; g0 += 8 * kNT) {
      const int tiles = min(kNT, (n - g0 + 7) / 8);
      const __nv_bfloat16* xr[kNT];
#pragma unroll
      for (int t = 0; t < kNT; ++t) xr[t] = p.in + int64_t{src[min(g0 + 8 * t + g, n - 1)]} * K;
      few_rows_unit<kNT>(wr, xr, K, tiles, smem, [&](int t, const float(&h)[2][4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = g0 + 8 * t + 2 * q + (i & 1);
          if (r >= n) continue;
          const int64_t row = dst[r];
          const int feature = g + (i >= 2 ? 8 : 0);
          if (kKind == kUpSwiGLU) {
            const int64_t j = unit * 16 + feature;
            if (j >= p.positions) continue;
            const float gate = round_bf16(h[0][i]), up = round_bf16(h[1][i]);
            p.out[row * p.positions + j] = __float2bfloat16(gate * sigmoid(gate) * up);
          } else {
#pragma unroll
            for (int m = 0; m < 2; ++m) {
              const int64_t j = unit * 32 + 16 * m + feature;
              if (j >= p.positions) continue;
              p.out[row * p.positions + j] = __float2bfloat16(
                  kKind == kUpGelu ? gelu(round_bf16(h[m][i]), p.gelu_exact) : h[m][i]);
            }
          }
        }
      });
    }
  }
}

template <int kKind, int kNT>
void launch_mma(const KernelArgs& a, int64_t slots, cudaStream_t stream) {
  const int64_t units = kKind == kUpSwiGLU ? ceil_div(a.positions, 16) : ceil_div(a.positions, 32);
  const int64_t blocks = std::min<int64_t>(units, 65535);
  decode_expert_mma_kernel<kKind, kNT>
      <<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(slots)), kFewRowsThreads, 0,
         stream>>>(a);
  CUDA_CHECK(cudaGetLastError());
}

// Routed rows per pass over the weights: 8 or 16 (registers); an expert with more takes further
// passes (its weights read again).
template <int kKind>
void launch_mma(const KernelArgs& a, int64_t num_tokens, cudaStream_t stream) {
  const int64_t slots = std::min<int64_t>(a.num_experts, num_tokens * a.top_k);
  if (num_tokens <= 8) {
    launch_mma<kKind, 1>(a, slots, stream);
  } else {
    launch_mma<kKind, 2>(a, slots, stream);
  }
}

template <int kKind>
void launch(const KernelArgs& a, int64_t num_tokens, cudaStream_t stream) {
  static const int sms = current_device_sms();
  const int64_t units = kKind == kUpSwiGLU ? a.positions : a.positions / 2;
  const int64_t slots = std::min<int64_t>(a.num_experts, num_tokens * a.top_k);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(ceil_div(units, kWarps), ceil_div(int64_t{kBlocksPerSm} * sms, slots)));
  decode_expert_kernel<kKind>
      <<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(slots)), kThreads, 0, stream>>>(
          a);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void moe_decode_experts(const MoEDecodeParams& p, cudaStream_t stream) {
  MOEX_CHECK(p.d % 8 == 0 && p.f % 8 == 0, "moe_decode_experts: d (", p.d, ") and F (", p.f,
             ") must be multiples of 8");
  MOEX_CHECK(p.num_tokens > 0 && p.num_tokens <= kMaxDecodeCapacity,
             "moe_decode_experts: T=", p.num_tokens, " outside [1, ", kMaxDecodeCapacity, "]");
  KernelArgs up{static_cast<const __nv_bfloat16*>(p.x),
                p.gather,
                p.counts,
                p.info,
                static_cast<const __nv_bfloat16*>(p.w1),
                static_cast<__nv_bfloat16*>(p.a),
                p.d,
                p.f,
                p.swiglu ? 2 * p.f : p.f,
                p.top_k,
                p.num_experts,
                p.gelu_exact};
  if (p.tensor_cores) {
    if (p.swiglu) {
      launch_mma<kUpSwiGLU>(up, p.num_tokens, stream);
    } else {
      launch_mma<kUpGelu>(up, p.num_tokens, stream);
    }
  } else if (p.swiglu) {
    launch<kUpSwiGLU>(up, p.num_tokens, stream);
  } else {
    launch<kUpGelu>(up, p.num_tokens, stream);
  }
  KernelArgs down = up;
  down.in = static_cast<const __nv_bfloat16*>(p.a);
  down.w = static_cast<const __nv_bfloat16*>(p.w2);
  down.out = static_cast<__nv_bfloat16*>(p.out);
  down.k_dim = p.f;
  down.positions = p.d;
  down.w_rows = p.d;
  if (p.tensor_cores) {
    launch_mma<kDown>(down, p.num_tokens, stream);
  } else {
    launch<kDown>(down, p.num_tokens, stream);
  }
}

}  // namespace moex::cuda
