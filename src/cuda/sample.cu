// Sampling as the CPU twin does it, without sorting the vocabulary. Every token gets a distinct
// 64-bit key that orders tokens as the host's sort does (larger logit first, lower id first among
// equal logits). "The first token in that order whose running total of some weight passes a
// target" is then found by a radix descent over the key, 4 bits a pass: a pass sums the weights
// of the tokens under the prefix fixed so far into 16 bins, and the bin in which the running total
// passes the target fixes the next 4 bits, until one token is left. That one descent finds the
// top-k cutoff (weight 1, target k), the top-p cutoff (weight exp((logit - max) / T), target
// top_p times the kept total) and the draw (target u times the nucleus total). Sums are fp64 in a
// fixed order, so a row gives the same token on every run.
#include <cstdint>

#include "core/rng.h"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/sample.h"

namespace moex::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBits = 4, kBins = 1 << kBits;  // key bits fixed per pass
constexpr int kUnroll = 16;                   // loads in flight per thread
constexpr int kParamWords = 10;               // ops::kSampleParamWords

struct RowParams {
  double temperature, top_p;
  int64_t top_k;
  uint64_t seed, draw;
};

__device__ __forceinline__ uint64_t word_pair(const int32_t* w) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(w[1])) << 32) | static_cast<uint32_t>(w[0]);
}

// The words of an ops::SampleParams, low word first; they need only 4-byte alignment.
__device__ __forceinline__ RowParams read_params(const int32_t* w) {
  RowParams p;
  p.temperature = __longlong_as_double(static_cast<long long>(word_pair(w)));
  p.top_p = __longlong_as_double(static_cast<long long>(word_pair(w + 2)));
  p.top_k = static_cast<int64_t>(word_pair(w + 4));
  p.seed = word_pair(w + 6);
  p.draw = word_pair(w + 8);
  return p;
}

// Larger key = earlier in the host's order: the logit's bits made monotone (-0 taken as +0, as the
// host's comparisons see them equal), then the complement of the id. Distinct, and never 0.
__device__ __forceinline__ uint64_t order_key(float v, int64_t id) {
  uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
  b ^= (b & 0x80000000u) ? 0xffffffffu : 0x80000000u;
  return (static_cast<uint64_t>(b) << 32) | ~static_cast<uint32_t>(id);
}
__device__ __forceinline__ int32_t key_id(uint64_t key) {
  return static_cast<int32_t>(~static_cast<uint32_t>(key));
}

// f(value, id) for each element of the row this thread owns, kUnroll loads in flight (a row is
// read many times, from L2, by one block: latency, not bandwidth, bounds a pass).
template <typename F>
__device__ __forceinline__ void for_each(const float* row, int64_t cols, F&& f) {
  for (int64_t base = threadIdx.x; base < cols; base += kUnroll * kThreads) {
    float v[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int64_t i = base + static_cast<int64_t>(j) * kThreads;
      v[j] = i < cols ? row[i] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int64_t i = base + static_cast<int64_t>(j) * kThreads;
      if (i < cols) f(v[j], i);
    }
  }
}

// The largest key over the block; every thread gets it.
__device__ __forceinline__ uint64_t block_max(uint64_t k) {
  __shared__ uint64_t warp_max[kWarps];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, k, o);
    k = other > k ? other : k;
  }
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = k;
  __syncthreads();
  k = warp_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) k = warp_max[w] > k ? warp_max[w] : k;
  __syncthreads();  // warp_max may be reused by the next call
  return k;
}

// The key of the first kept token (key >= lo) in key order at which the running total of
// weight(logit) passes target (> target when strict, >= otherwise), and in *through the running
// total there. When rounding leaves the total short of target, the last kept token and the whole
// total, as the CPU's loops end. 0 when nothing is kept. Every thread of the block calls it and
// gets the answer.
template <typename W>
__device__ uint64_t select_key(const float* row, int64_t cols, uint64_t lo, W weight, double target,
                               bool strict, double* through) {
  __shared__ double part_w[kWarps][kBins];  // per warp, then per bin over the block
  __shared__ int part_c[kWarps][kBins];
  __shared__ double bin_w[kBins];
  __shared__ int bin_c[kBins];
  __shared__ uint64_t s_prefix;
  __shared__ double s_above, s_through;  // running total before / through the chosen bin
  __shared__ int s_short, s_single;      // short of target: follow the last bins; one token left
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_above = s_through = 0;
    s_short = s_single = 0;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint64_t prefix = 0, mask = 0;  // the key bits fixed so far
  for (int shift = 64 - kBits;; shift -= kBits) {
    double w[kBins];
    int c[kBins];
#pragma unroll
    for (int d = 0; d < kBins; ++d) {
      w[d] = 0;
      c[d] = 0;
    }
    for_each(row, cols, [&](float v, int64_t i) {
      const uint64_t key = order_key(v, i);
      if (key < lo || (key & mask) != prefix) return;
      const int bin = static_cast<int>(key >> shift) & (kBins - 1);
      const double x = weight(v);
#pragma unroll
      for (int d = 0; d < kBins; ++d)  // registers, not an indexed (local memory) array
        if (d == bin) {
          w[d] += x;
          ++c[d];
        }
    });
#pragma unroll
    for (int d = 0; d < kBins; ++d) {
      const double sw = warp_sum(w[d]);
      const int sc = warp_sum(c[d]);
      if (lane == 0) {
        part_w[warp][d] = sw;
        part_c[warp][d] = sc;
      }
    }
    __syncthreads();
    if (threadIdx.x < kBins) {
      double sw = 0;
      int sc = 0;
      for (int k = 0; k < kWarps; ++k) {
        sw += part_w[k][threadIdx.x];
        sc += part_c[k][threadIdx.x];
      }
      bin_w[threadIdx.x] = sw;
      bin_c[threadIdx.x] = sc;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // Bins from the highest key down, as the CPU walks its sorted tokens.
      double acc = s_above, before = s_above;
      int pick = -1;
      bool passed = false;
      for (int d = kBins - 1; d >= 0; --d) {
        if (bin_c[d] == 0) continue;
        pick = d;
        before = acc;
        acc += bin_w[d];
        if (!s_short && (strict ? acc > target : acc >= target)) {
          passed = true;
          break;
        }
      }
      if (!passed) s_short = 1;  // the last non-empty bin, from here on the lowest
      if (pick >= 0) {
        s_prefix |= static_cast<uint64_t>(pick) << shift;
        s_above = before;
        s_through = before + bin_w[pick];
        s_single = bin_c[pick] == 1;
      } else {
        s_single = 1;  // nothing kept
      }
    }
    __syncthreads();
    prefix = s_prefix;
    mask |= static_cast<uint64_t>(kBins - 1) << shift;
    if (s_single || shift == 0) break;
  }
  // The one kept token under the prefix (0 when there is none).
  const double total = s_through;
  uint64_t best = 0;
  for_each(row, cols, [&](float v, int64_t i) {
    const uint64_t key = order_key(v, i);
    if (key >= lo && (key & mask) == prefix && key > best) best = key;
  });
  best = block_max(best);  // its barriers end this call's reads of the shared state
  *through = total;
  return best;
}

__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const float* x, int64_t cols, const int32_t* params, int32_t* out) {
  wait_for_previous_kernel();
  const float* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  const RowParams p = read_params(params + static_cast<int64_t>(blockIdx.x) * kParamWords);
  // The first token in order: the greedy answer, and the largest logit of the softmax.
  uint64_t first = 0;
  for_each(row, cols, [&](float v, int64_t i) {
    const uint64_t key = order_key(v, i);
    first = key > first ? key : first;
  });
  first = block_max(first);
  if (!(p.temperature > 0.0)) {  // 0 (the host refuses negative ones): greedy
    if (threadIdx.x == 0) out[blockIdx.x] = key_id(first);
    return;
  }
  const double temperature = p.temperature, max_logit = row[key_id(first)];
  const auto prob = [=](float v) {
    return exp((static_cast<double>(v) - max_logit) / temperature);
  };
  uint64_t lo = 0;  // the kept tokens are those with key >= lo
  double through = 0;
  if (p.top_k > 0 && p.top_k < cols) {
    const uint64_t kth = select_key(
        row, cols, 0, [](float) { return 1.0; }, static_cast<double>(p.top_k), false, &through);
    if (kth != 0) lo = kth;
  }
  double total = 0;
  for_each(row, cols, [&](float v, int64_t i) {
    if (order_key(v, i) >= lo) total += prob(v);
  });
  total = block_sum<kThreads>(total);
  if (p.top_p < 1.0) {
    // The CPU adds probabilities divided by the total and compares with top_p.
    double nucleus = total;
    const uint64_t last = select_key(row, cols, lo, prob, p.top_p * total, false, &nucleus);
    if (last != 0) {
      lo = last;
      total = nucleus;
    }
  }
  const double u = static_cast<double>(philox_uniform(p.seed, 0x5a3d1e, p.draw)) * total;
  const uint64_t drawn = select_key(row, cols, lo, prob, u, true, &through);
  if (threadIdx.x == 0) out[blockIdx.x] = key_id(drawn != 0 ? drawn : first);
}

}  // namespace

void sample_rows_f32(const float* x, int64_t rows, int64_t cols, const int32_t* params,
                     int32_t* out, cudaStream_t stream) {
  if (rows == 0) return;
  launch_kernel(sample_rows_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, cols,
                params, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moex::cuda
