// Sampling as the CPU twin does it, without sorting the vocabulary (docs/gpu-model.md §Decoding).
//
// Every token gets a distinct 64-bit key that orders tokens as the host's sort does (larger logit
// first, lower id first among equal logits). "The first token in that order whose running total
// of some weight reaches a target" is found by a radix descent over the key, 4 bits a level: a
// level sums the weights (and counts) of the candidates under the prefix fixed so far into 16
// bins, and the bin in which the running total reaches the target fixes the next 4 bits, until
// one token is left. One descent finds the top-k cut-off (counts, target k), one the top-p cut-off
// and one the draw (fixed-point weights, core/sampling_math.h). Weights are integers, so every
// sum is exact and the order in which threads add them does not matter: the token is the CPU's.
//
// A level over the whole row re-reads the row (from L2) and pays an exponential per candidate
// under the prefix. Once the candidates of a level are few (kCompact), they are gathered into
// shared memory with their weights and the remaining levels, and any later descent over a kept
// set that small, run there.
#include <cstdint>

#include "core/sampling_math.h"
#include "cuda/block_reduce.cuh"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/sample.h"

namespace moex::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBits = 4, kBins = 1 << kBits;  // key bits fixed per level
constexpr int kUnroll = 16;                   // loads in flight per thread over a row
constexpr int kCompact = 4096;                // candidates held in shared memory
constexpr int kParamWords = 10;               // ops::kSampleParamWords
static_assert(kWarps == kBins, "a level's bins are reduced one warp a bin");

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

// f(value, id) for each element of the row, kUnroll loads in flight per thread (a row is read
// several times by one block, from L2: latency, not bandwidth, bounds a pass).
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

// Dynamic shared memory of a block (~164 KiB).
struct Shared {
  uint64_t thread_w[kBins][kThreads];  // each thread's bins of a level (no atomics, exact)
  uint32_t thread_c[kBins][kThreads];
  uint64_t cand_key[kCompact];  // the gathered candidates, in no particular order
  uint64_t cand_w[kCompact];
  uint64_t level_w[kBins];  // a level's bins summed over the block
  uint32_t level_c[kBins];
  int n_cand;       // gathered candidates
  int cand_kept;    // the gathered ones are every token with key >= lo (else one descent's bin)
  uint64_t target;  // of the running descent
  uint64_t prefix, above_w;  // key bits fixed so far; the weight and count of the candidates
  uint32_t above_c, bin_c;   // ordered before the chosen bin; the chosen bin's count
  uint64_t bin_w;
};

enum class Goal { kCount, kTopP, kDraw };  // what a descent's target counts

struct RowState {
  const float* row;
  int64_t cols;
  float max_logit, inverse_t;
  uint64_t lo = 0;  // the kept tokens: key >= lo
  __device__ uint64_t weight(float v) const { return sampling_weight(v, max_logit, inverse_t); }
};

// Gathers the row's tokens with key >= lo that pass `keep(key)` into the candidate list.
template <typename Keep>
__device__ void gather(Shared& s, const RowState& r, Keep keep) {
  if (threadIdx.x == 0) s.n_cand = 0;
  __syncthreads();
  for_each(r.row, r.cols, [&](float v, int64_t i) {
    const uint64_t key = sampling_order_key(v, i);
    if (key < r.lo || !keep(key)) return;
    const int at = atomicAdd(&s.n_cand, 1);
    s.cand_key[at] = key;
    s.cand_w[at] = r.weight(v);
  });
  __syncthreads();
}

// The first candidate (key >= r.lo, in key order from the top) at which the running count
// (kCount) or weight reaches the goal's target: count >= k; weight >= top_p_target(top_p, total);
// weight > draw_target(u, total), total being the weight of all candidates. When the target is
// never reached (every weight 0), the last candidate, as the CPU's walk ends. Sets *through_w and
// *through_c to the running weight and count through the chosen token. Every thread calls it and
// gets the answer.
__device__ uint64_t descend(Shared& s, const RowState& r, bool compact, Goal goal, double param,
                            uint64_t* through_w, uint32_t* through_c) {
  if (threadIdx.x == 0) {
    s.prefix = s.above_w = 0;
    s.above_c = 0;
  }
  __syncthreads();
  uint64_t mask = 0;  // the key bits fixed so far
  for (int shift = 64 - kBits;; shift -= kBits) {
    const uint64_t prefix = s.prefix;
    for (int d = 0; d < kBins; ++d) {
      s.thread_w[d][threadIdx.x] = 0;
      s.thread_c[d][threadIdx.x] = 0;
    }
    const auto add = [&](uint64_t key, uint64_t w) {
      const int bin = static_cast<int>(key >> shift) & (kBins - 1);
      s.thread_w[bin][threadIdx.x] += w;
      s.thread_c[bin][threadIdx.x] += 1;
    };
    if (compact) {
      for (int j = threadIdx.x; j < s.n_cand; j += kThreads) {
        const uint64_t key = s.cand_key[j];
        if (key >= r.lo && (key & mask) == prefix) add(key, s.cand_w[j]);
      }
    } else {
      for_each(r.row, r.cols, [&](float v, int64_t i) {
        const uint64_t key = sampling_order_key(v, i);
        if (key >= r.lo && (key & mask) == prefix) add(key, goal == Goal::kCount ? 0 : r.weight(v));
      });
    }
    __syncthreads();
    {  // warp w sums bin w over the block's threads
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      uint64_t w = 0;
      uint32_t c = 0;
      for (int t = lane; t < kThreads; t += 32) {
        w += s.thread_w[warp][t];
        c += s.thread_c[warp][t];
      }
      w = warp_sum(w);
      c = warp_sum(c);
      if (lane == 0) {
        s.level_w[warp] = w;
        s.level_c[warp] = c;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (mask == 0) {  // the first level sees every candidate: the total fixes the target
        uint64_t total = 0;
        for (int d = 0; d < kBins; ++d) total += s.level_w[d];
        s.target = goal == Goal::kCount  ? static_cast<uint64_t>(param)
                   : goal == Goal::kTopP ? top_p_target(param, total)
                                         : draw_target(static_cast<float>(param), total);
      }
      // Bins from the highest key down, as the CPU walks its sorted tokens.
      uint64_t acc_w = s.above_w;
      uint32_t acc_c = s.above_c;
      int pick = -1;
      uint64_t before_w = acc_w;
      uint32_t before_c = acc_c;
      for (int d = kBins - 1; d >= 0; --d) {
        if (s.level_c[d] == 0) continue;
        pick = d;
        before_w = acc_w;
        before_c = acc_c;
        acc_w += s.level_w[d];
        acc_c += s.level_c[d];
        const bool reached = goal == Goal::kCount  ? acc_c >= s.target
                             : goal == Goal::kTopP ? acc_w >= s.target
                                                   : acc_w > s.target;
        if (reached) break;  // else the loop ends on the lowest bin: the last candidate
      }
      // pick < 0 only without candidates, which a descent never has (the first token is kept).
      s.prefix |= static_cast<uint64_t>(pick < 0 ? 0 : pick) << shift;
      s.above_w = before_w;
      s.above_c = before_c;
      s.bin_w = pick < 0 ? 0 : s.level_w[pick];
      s.bin_c = pick < 0 ? 0 : s.level_c[pick];
    }
    __syncthreads();
    mask |= static_cast<uint64_t>(kBins - 1) << shift;
    const uint64_t chosen = s.prefix;
    const uint32_t above = s.above_c, in_bin = s.bin_c;
    if (!compact && in_bin <= kCompact) {
      // Few enough to hold: every token from the top through this bin if they fit (later
      // descents keep a subset of them), else this bin's.
      const bool from_top = static_cast<uint64_t>(above) + in_bin <= kCompact;
      gather(s, r, [&](uint64_t key) { return from_top ? key >= chosen : (key & mask) == chosen; });
      if (threadIdx.x == 0) s.cand_kept = from_top;
      compact = true;
    }
    if (in_bin <= 1 || shift == 0) break;
  }
  // The one candidate under the prefix.
  const uint64_t prefix = s.prefix;
  uint64_t best = 0;
  for (int j = threadIdx.x; j < s.n_cand; j += kThreads) {
    const uint64_t key = s.cand_key[j];
    if (key >= r.lo && (key & mask) == prefix && key > best) best = key;
  }
  *through_w = s.above_w + s.bin_w;
  *through_c = s.above_c + s.bin_c;
  return block_max(best);  // its barriers end this call's reads of the shared state
}

__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const float* x, int64_t cols, const int32_t* params, int32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  Shared& s = *reinterpret_cast<Shared*>(smem);
  wait_for_previous_kernel();
  RowState r;
  r.row = x + static_cast<int64_t>(blockIdx.x) * cols;
  r.cols = cols;
  const RowParams p = read_params(params + static_cast<int64_t>(blockIdx.x) * kParamWords);
  // The first token in order: the greedy answer, and the largest logit of the weights.
  uint64_t first = 0;
  for_each(r.row, cols, [&](float v, int64_t i) {
    const uint64_t key = sampling_order_key(v, i);
    first = key > first ? key : first;
  });
  first = block_max(first);
  if (!(p.temperature > 0.0)) {  // 0 (the host refuses negative ones): greedy
    if (threadIdx.x == 0) out[blockIdx.x] = sampling_key_id(first);
    return;
  }
  r.max_logit = r.row[sampling_key_id(first)];
  r.inverse_t = sampling_inverse_temperature(p.temperature);
  bool compact = false;  // the candidate list holds every token with key >= r.lo
  uint64_t through_w = 0;
  uint32_t through_c = 0;
  const auto keep_from = [&](uint64_t key) {
    r.lo = key;
    compact = compact || (s.cand_kept && through_c <= kCompact);
  };
  if (p.top_k > 0 && p.top_k < cols)
    keep_from(
        descend(s, r, compact, Goal::kCount, static_cast<double>(p.top_k), &through_w, &through_c));
  if (p.top_p < 1.0)
    keep_from(descend(s, r, compact, Goal::kTopP, p.top_p, &through_w, &through_c));
  const uint64_t drawn =
      descend(s, r, compact, Goal::kDraw, sampling_uniform(p.seed, p.draw), &through_w, &through_c);
  if (threadIdx.x == 0) out[blockIdx.x] = sampling_key_id(drawn != 0 ? drawn : first);
}

}  // namespace

void sample_rows_f32(const float* x, int64_t rows, int64_t cols, const int32_t* params,
                     int32_t* out, cudaStream_t stream) {
  if (rows == 0) return;
  static bool smem_allowed = false;  // above 48 KiB needs the opt-in, once
  if (!smem_allowed) {
    CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(Shared))));
    smem_allowed = true;
  }
  launch_kernel(sample_rows_kernel, static_cast<unsigned>(rows), kThreads, sizeof(Shared), stream,
                x, cols, params, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moex::cuda
