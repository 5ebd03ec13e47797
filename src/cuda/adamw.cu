#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <type_traits>

#include "core/stochastic_round.h"
#include "cuda/adamw.h"
#include "cuda/bf16_util.cuh"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device.h"

namespace moex::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 16;                              // elements per thread per chunk
constexpr int64_t kChunk = int64_t{kThreads} * kPerThread;  // a multiple of 4: float4 stays aligned

// Step scalars formed on the host in double, rounded to fp32 as cpu::adamw_step does.
struct Scalars {
  double lr;
  float b1, one_minus_b1, b2, one_minus_b2, step_size, inv_sqrt_bc2, eps, grad_scale;
  uint32_t step;  // seeds the stochastic rounding of bf16 moments
};

// Weights, moments and gradients are stored as float or bf16 and computed in fp32. A bf16 store
// takes 16 random bits (core/stochastic_round.h); an fp32 store ignores them.
__device__ __forceinline__ float load_f32(const float* p) {
  return *p;
}
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) {
  return bf16_bits_to_f32(*reinterpret_cast<const uint16_t*>(p));
}
__device__ __forceinline__ void store_rounded(float* p, float x, uint32_t) {
  *p = x;
}
__device__ __forceinline__ void store_rounded(__nv_bfloat16* p, float x, uint32_t random) {
  *reinterpret_cast<uint16_t*>(p) = f32_to_bf16_stochastic(x, random);
}
// Four consecutive values as loaded: 16-byte aligned fp32 or 8-byte aligned bf16 (element 0 in
// the low half), widened to fp32 when used.
template <typename T>
struct Raw4;
template <>
struct Raw4<float> {
  float4 v;
};
template <>
struct Raw4<__nv_bfloat16> {
  uint2 v;
};
__device__ __forceinline__ Raw4<float> load_raw4(const float* p) {
  return {*reinterpret_cast<const float4*>(p)};
}
__device__ __forceinline__ Raw4<__nv_bfloat16> load_raw4(const __nv_bfloat16* p) {
  return {*reinterpret_cast<const uint2*>(p)};
}
__device__ __forceinline__ float4 widen(const Raw4<float>& r) {
  return r.v;
}
__device__ __forceinline__ float4 widen(const Raw4<__nv_bfloat16>& r) {
  const uint2 u = r.v;
  return make_float4(bits_float(u.x << 16), bits_float(u.x & 0xffff0000u), bits_float(u.y << 16),
                     bits_float(u.y & 0xffff0000u));
}
template <typename T>
__device__ __forceinline__ float4 load4_f32(const T* p) {
  return widen(load_raw4(p));
}
__device__ __forceinline__ void store4_rounded(float* p, float4 x, uint4, int) {
  *reinterpret_cast<float4*>(p) = x;
}
// Element k's random bits are random.{x,y,z,w} >> shift. Four finite values take
// f32_to_bf16_stochastic's finite branch, (bits + low 16 random bits) >> 16, written as the high
// halves of two sums joined by one byte permute: the pass is short of integer issue, and the
// special-value tests and half-word packing were a third of its integer instructions.
__device__ __forceinline__ uint32_t rounded_pair(float lo, float hi, uint32_t random_lo,
                                                 uint32_t random_hi) {
  return __byte_perm(float_bits(lo) + (random_lo & 0xffffu), float_bits(hi) + (random_hi & 0xffffu),
                     0x7632);
}
__device__ __forceinline__ void store4_rounded(__nv_bfloat16* p, float4 x, uint4 random,
                                               int shift) {
  uint2 u;
  const bool finite = fabsf(x.x) <= FLT_MAX && fabsf(x.y) <= FLT_MAX && fabsf(x.z) <= FLT_MAX &&
                      fabsf(x.w) <= FLT_MAX;  // false for NaN
  if (finite) {
    u.x = rounded_pair(x.x, x.y, random.x >> shift, random.y >> shift);
    u.y = rounded_pair(x.z, x.w, random.z >> shift, random.w >> shift);
  } else {
    u.x = f32_to_bf16_stochastic(x.x, random.x >> shift) |
          (uint32_t{f32_to_bf16_stochastic(x.y, random.y >> shift)} << 16);
    u.y = f32_to_bf16_stochastic(x.z, random.z >> shift) |
          (uint32_t{f32_to_bf16_stochastic(x.w, random.w >> shift)} << 16);
  }
  *reinterpret_cast<uint2*>(p) = u;
}

template <typename T>
constexpr bool kIsBf16 = std::is_same_v<T, __nv_bfloat16>;

// The twin's expression, operation by operation, with explicit round-to-nearest intrinsics so no
// multiply-add is fused: the GPU then gives the same bits as the (unfused) fp32 CPU loop. When a
// bf16 store follows (moments M or master P), `random` receives the element's rounding bits (from
// the weight before the step). An update with the approximate square root and division, checked
// against a bound so it kept these bits, measured slower (docs/gpu-model.md §AdamW with a bf16
// master).
template <typename P, typename M>
__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, uint32_t& random,
                                              float grad, float decay, const Scalars& s) {
  if constexpr (kIsBf16<M> || kIsBf16<P>) random = adam_rounding_bits(grad, p, s.step);
  const float g = __fmul_rn(grad, s.grad_scale);
  m = __fadd_rn(__fmul_rn(s.b1, m), __fmul_rn(s.one_minus_b1, g));
  v = __fadd_rn(__fmul_rn(s.b2, v), __fmul_rn(__fmul_rn(s.one_minus_b2, g), g));
  const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), s.inv_sqrt_bc2), s.eps);
  p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(s.step_size, m), denom));
}

// Elements [begin, end) of one segment; begin % 4 == 0 on the vector path. The master P (fp32, or
// bf16 stored with its own rounding bits), moments M and gradients G (fp32 or bf16) are all read
// as fp32. param: the bf16 copy of an fp32 master, or null.
template <bool kVec, int kAhead, typename P, typename M, typename G>
__device__ __forceinline__ void adamw_chunk(P* __restrict__ master,
                                            __nv_bfloat16* __restrict__ param,
                                            const G* __restrict__ grad, M* __restrict__ exp_avg,
                                            M* __restrict__ exp_avg_sq, int64_t begin, int64_t end,
                                            float decay, const Scalars& s) {
  auto one = [&](int64_t j) {
    uint32_t random = 0;
    float p = load_f32(master + j), m = load_f32(exp_avg + j), v = load_f32(exp_avg_sq + j);
    adamw_element<P, M>(p, m, v, random, load_f32(grad + j), decay, s);
    store_rounded(master + j, p, adam_weight_rounding_bits(random));
    store_rounded(exp_avg + j, m, random);
    store_rounded(exp_avg_sq + j, v, random >> 16);
    if (param != nullptr) param[j] = __float2bfloat16_rn(p);
  };
  if constexpr (kVec) {
    // Four elements from element i (i + 4 <= end), from their loaded values.
    auto update4 = [&](int64_t i, float4 p, float4 m, float4 v, float4 g) {
      uint4 random = make_uint4(0, 0, 0, 0);
      adamw_element<P, M>(p.x, m.x, v.x, random.x, g.x, decay, s);
      adamw_element<P, M>(p.y, m.y, v.y, random.y, g.y, decay, s);
      adamw_element<P, M>(p.z, m.z, v.z, random.z, g.z, decay, s);
      adamw_element<P, M>(p.w, m.w, v.w, random.w, g.w, decay, s);
      const uint4 weight_random =
          make_uint4(adam_weight_rounding_bits(random.x), adam_weight_rounding_bits(random.y),
                     adam_weight_rounding_bits(random.z), adam_weight_rounding_bits(random.w));
      store4_rounded(master + i, p, weight_random, 0);
      store4_rounded(exp_avg + i, m, random, 0);
      store4_rounded(exp_avg_sq + i, v, random, 16);
      if (param != nullptr) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y);
        const __nv_bfloat162 hi = __floats2bfloat162_rn(p.z, p.w);
        uint2 packed;
        packed.x = *reinterpret_cast<const uint32_t*>(&lo);
        packed.y = *reinterpret_cast<const uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(param + i) = packed;
      }
    };
    constexpr int kVecs = kPerThread / 4;
    auto vec_start = [&](int k) { return begin + (int64_t{k} * kThreads + threadIdx.x) * 4; };
    // kAhead vectors' loads are issued before their math: a bf16 master's loads are 8 bytes or
    // less, and one vector at a time keeps too few bytes in flight to keep up with memory.
#pragma unroll
    for (int k0 = 0; k0 < kVecs; k0 += kAhead) {
      Raw4<P> rp[kAhead];
      Raw4<M> rm[kAhead], rv[kAhead];
      Raw4<G> rg[kAhead];
#pragma unroll
      for (int a = 0; a < kAhead; ++a) {
        const int64_t i = vec_start(k0 + a);
        if (i + 4 <= end) {
          rp[a] = load_raw4(master + i);
          rm[a] = load_raw4(exp_avg + i);
          rv[a] = load_raw4(exp_avg_sq + i);
          rg[a] = load_raw4(grad + i);
        }
      }
#pragma unroll
      for (int a = 0; a < kAhead; ++a) {
        const int64_t i = vec_start(k0 + a);
        if (i + 4 <= end) {
          update4(i, widen(rp[a]), widen(rm[a]), widen(rv[a]), widen(rg[a]));
        } else {
          for (int64_t j = i; j < end && j < i + 4; ++j) one(j);
        }
      }
    }
  } else {
#pragma unroll 4
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t i = begin + int64_t{k} * kThreads + threadIdx.x;
      if (i < end) one(i);
    }
  }
}

// One launch over all segments. Chunks of kChunk elements are numbered across the segments in
// order; block b takes global chunks b, b + gridDim.x, ... so large and small tensors spread over
// the whole grid. Elements between segments (padding) are never touched.
template <typename P, typename M, typename G>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(P* master, __nv_bfloat16* param, const G* grad, M* exp_avg, M* exp_avg_sq,
                 const AdamWSegment* __restrict__ segments, int num_segments, bool aligned,
                 Scalars s) {
  // A bf16 master loads four vectors ahead (docs/gpu-model.md §AdamW with a bf16 master).
  constexpr int kAhead = kIsBf16<P> ? 4 : 1;
  const int64_t grid = gridDim.x;
  int64_t first_chunk = 0;  // global number of the current segment's chunk 0
  for (int si = 0; si < num_segments; ++si) {
    const AdamWSegment seg = segments[si];
    const int64_t chunks = (seg.count + kChunk - 1) / kChunk;
    int64_t j = (int64_t{blockIdx.x} - first_chunk % grid + grid) % grid;
    first_chunk += chunks;
    if (j >= chunks) continue;
    // Rounded as the CPU twin's unfused double expression (no contraction into a DFMA).
    const float decay =
        static_cast<float>(__dadd_rn(1.0, -__dmul_rn(s.lr, static_cast<double>(seg.weight_decay))));
    const int64_t seg_end = seg.offset + seg.count;
    const bool vec = aligned && seg.offset % 4 == 0;
    for (; j < chunks; j += grid) {
      const int64_t begin = seg.offset + j * kChunk;
      const int64_t end = min(seg_end, begin + kChunk);
      if (vec) {
        adamw_chunk<true, kAhead>(master, param, grad, exp_avg, exp_avg_sq, begin, end, decay,
                                  s);
      } else {
        adamw_chunk<false, kAhead>(master, param, grad, exp_avg, exp_avg_sq, begin, end, decay,
                                   s);
      }
    }
  }
}

// sum_of_squares: block b squares and sums [b * kSqChunk, (b + 1) * kSqChunk) in fp32 (each
// thread a fixed strided subset, then block_sum); one block adds the partials in double, in order.
constexpr int kSqPerThread = 32;
constexpr int64_t kSqChunk = int64_t{kThreads} * kSqPerThread;
constexpr int kFinalThreads = 1024;

template <typename G>
__global__ void squares_partials_kernel(const G* __restrict__ x, int64_t n, bool vec,
                                        double* __restrict__ partial) {
  const int64_t begin = blockIdx.x * kSqChunk;
  float acc = 0.0f;
  if (vec && begin + kSqChunk <= n) {
#pragma unroll
    for (int k = 0; k < kSqPerThread / 4; ++k) {
      const float4 v = load4_f32(x + begin + (threadIdx.x + int64_t{k} * kThreads) * 4);
      acc += (v.x * v.x + v.y * v.y) + (v.z * v.z + v.w * v.w);
    }
  } else {
    for (int k = 0; k < kSqPerThread; ++k) {
      const int64_t i = begin + threadIdx.x + int64_t{k} * kThreads;
      if (i < n) {
        const float v = load_f32(x + i);
        acc += v * v;
      }
    }
  }
  acc = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(acc);
}

__global__ void squares_final_kernel(const double* __restrict__ partial, int64_t parts,
                                     double* __restrict__ out) {
  double acc = 0.0;
  for (int64_t p = threadIdx.x; p < parts; p += kFinalThreads) acc += partial[p];
  acc = block_sum<kFinalThreads>(acc);
  if (threadIdx.x == 0) out[0] = acc;
}

template <typename P, typename M, typename G>
int adamw_grid() {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, adamw_kernel<P, M, G>,
                                                           kThreads, 0));
  return std::max(1, current_device_sms() * std::max(1, per_sm));
}

template <typename P, typename M, typename G>
void launch_adamw(void* master, void* param_bf16, const void* grad, void* exp_avg, void* exp_avg_sq,
                  const AdamWSegment* segments, int num_segments, const Scalars& s,
                  cudaStream_t stream) {
  const auto addr = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const bool aligned = addr(master) % (sizeof(P) * 4) == 0 && addr(grad) % (sizeof(G) * 4) == 0 &&
                       addr(exp_avg) % (sizeof(M) * 4) == 0 &&
                       addr(exp_avg_sq) % (sizeof(M) * 4) == 0 && addr(param_bf16) % 8 == 0;
  const int grid = adamw_grid<P, M, G>();  // a few microseconds of host queries a step
  adamw_kernel<P, M, G><<<grid, kThreads, 0, stream>>>(
      static_cast<P*>(master), static_cast<__nv_bfloat16*>(param_bf16), static_cast<const G*>(grad),
      static_cast<M*>(exp_avg), static_cast<M*>(exp_avg_sq), segments, num_segments, aligned, s);
  MOEX_LAUNCH_CHECK();
}

using LaunchAdamW = void (*)(void*, void*, const void*, void*, void*, const AdamWSegment*, int,
                             const Scalars&, cudaStream_t);

// The instantiation for the step's storage types.
template <typename P, typename M>
LaunchAdamW pick_launch(bool bf16_grads) {
  return bf16_grads ? launch_adamw<P, M, __nv_bfloat16> : launch_adamw<P, M, float>;
}
template <typename P>
LaunchAdamW pick_launch(bool bf16_moments, bool bf16_grads) {
  return bf16_moments ? pick_launch<P, __nv_bfloat16>(bf16_grads)
                      : pick_launch<P, float>(bf16_grads);
}

}  // namespace

void adamw_multi_tensor(void* master, void* param_bf16, const void* grad, void* exp_avg,
                        void* exp_avg_sq, const AdamWSegment* segments, int num_segments,
                        const AdamWStep& st, cudaStream_t stream) {
  MOEX_CHECK(num_segments >= 0, "adamw_multi_tensor: num_segments must be >= 0, got ",
             num_segments);
  MOEX_CHECK(st.step >= 1, "adamw_multi_tensor: step must be >= 1 (1-based), got ", st.step);
  MOEX_CHECK(st.beta1 >= 0 && st.beta1 < 1 && st.beta2 >= 0 && st.beta2 < 1,
             "adamw_multi_tensor: betas must be in [0, 1), got ", st.beta1, ", ", st.beta2);
  if (num_segments == 0) return;
  MOEX_CHECK(master && grad && exp_avg && exp_avg_sq && segments,
             "adamw_multi_tensor: a buffer or the segment table is null");
  // As cpu::adamw_step: double scalars, then fp32.
  const double b1 = st.beta1, b2 = st.beta2, lr = st.lr;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(st.step));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(st.step));
  Scalars s;
  s.lr = lr;
  s.b1 = static_cast<float>(b1);
  s.one_minus_b1 = static_cast<float>(1.0 - b1);
  s.b2 = static_cast<float>(b2);
  s.one_minus_b2 = static_cast<float>(1.0 - b2);
  s.step_size = static_cast<float>(lr / bc1);
  s.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  s.eps = static_cast<float>(st.eps);
  s.grad_scale = static_cast<float>(st.grad_scale);
  s.step = static_cast<uint32_t>(st.step);
  MOEX_CHECK(!st.bf16_master || param_bf16 == nullptr,
             "adamw_multi_tensor: a bf16 master is the weight the model reads; it has no copy");
  const LaunchAdamW launch = st.bf16_master
                                 ? pick_launch<__nv_bfloat16>(st.bf16_moments, st.bf16_grads)
                                 : pick_launch<float>(st.bf16_moments, st.bf16_grads);
  launch(master, param_bf16, grad, exp_avg, exp_avg_sq, segments, num_segments, s, stream);
}

size_t sum_of_squares_workspace_bytes(int64_t n) {
  return static_cast<size_t>(std::max<int64_t>(ceil_div(n, kSqChunk), 1)) * sizeof(double);
}

void sum_of_squares(const void* grad, bool bf16, int64_t n, double* out, void* workspace,
                    cudaStream_t stream) {
  MOEX_CHECK(n >= 0, "sum_of_squares: n must be >= 0, got ", n);
  if (n == 0) {
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), stream));
    return;
  }
  MOEX_CHECK(grad && out && workspace, "sum_of_squares: grad, out or workspace is null");
  const int64_t parts = ceil_div(n, kSqChunk);
  MOEX_CHECK(parts < (int64_t{1} << 31), "sum_of_squares: n = ", n, " is too large");
  auto* partial = static_cast<double*>(workspace);
  const bool vec = reinterpret_cast<uintptr_t>(grad) % (bf16 ? 8 : 16) == 0;
  if (bf16) {
    squares_partials_kernel<<<static_cast<unsigned>(parts), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(grad), n, vec, partial);
  } else {
    squares_partials_kernel<<<static_cast<unsigned>(parts), kThreads, 0, stream>>>(
        static_cast<const float*>(grad), n, vec, partial);
  }
  MOEX_LAUNCH_CHECK();
  squares_final_kernel<<<1, kFinalThreads, 0, stream>>>(partial, parts, out);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
