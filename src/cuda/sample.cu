// Sampling as the CPU twin does it, without sorting the vocabulary (docs/gpu-model.md §Decoding).
//
// Every token gets a distinct 64-bit key that orders tokens as the host's sort does (larger logit
// first, lower id first among equal logits), and a fixed-point weight (core/sampling_math.h).
// Each selection (the top-k cut-off by count, the top-p cut-off and the draw by weight) finds
// "the first token in key order at which the running total reaches a target" in two stages:
//
// 1. One pass puts every token in one of 2048 bins of (logit - max) / T, which orders them as the
//    keys do (bins never invert the order; equal logits share a bin), counting and weighing each
//    bin. All three selections read this one histogram: a scan over the bins finds the bin in
//    which the target is reached.
// 2. That bin's tokens (a few dozen to a few thousand) are gathered into shared memory. Up to 512
//    are ranked pairwise (each one's running totals are the sums over the larger keys); more go
//    through a radix descent over their keys, 4 bits a level from the first bit in which they
//    differ: a level sums the candidates under the prefix fixed so far into 16 bins and keeps
//    the one in which the running total reaches the target, until one token is left. A bin of
//    more than 4096 tokens (many tied or nearly equal logits) runs the same descent over the
//    whole row instead, re-reading it (from L2) once a level until few enough are left to gather.
//
// Weights are integers, so every sum is exact whatever order the threads add in: the token is the
// CPU's.
//
// The two passes every row needs (its first and last keys, then the histogram) run over chunks of
// the row in blocks of their own, two short kernels before the selecting one, so that a batch of
// one row reads its logits with a dozen SMs instead of one; their results (each chunk's extreme
// keys, the row's histogram summed with global atomics, exact as integers) wait in a workspace.
#include <algorithm>
#include <cstdint>

#include "core/env.h"
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
constexpr int kUnroll4 = 8;                   // ... of 16 bytes
constexpr int kCompact = 4096;                // candidates held in shared memory
constexpr int kRankMax = 512;                 // gathered candidates ranked pairwise
constexpr int kLogitBins = 2048;              // the first histogram's bins of (logit - max) / T
constexpr int kParamWords = 10;               // ops::kSampleParamWords
constexpr int kMaxChunks = 32;                // blocks a row's first two passes are split over
constexpr int64_t kMinChunkCols = 2048;       // ... each reading at least this many logits
static_assert(kWarps == kBins, "a level's bins are reduced one warp a bin");

// What the first two passes leave for the selecting kernel, per row.
struct RowWorkspace {
  uint64_t ends[2 * kMaxChunks];  // per chunk: its first key, and the complement of its last
  uint32_t hist_c[kLogitBins];    // the row's tokens by logit bin and their weights, as in Shared
  uint32_t hist_lo[kLogitBins];
  uint32_t hist_hi[kLogitBins];
};

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

// f(value, id) for each element of the row (or chunk). The selecting block reads its row again
// once per gathered bin (from L2), so a pass is bound by how many loads each thread keeps in
// flight: 16-byte loads where the row allows them (kUnroll4 of them, 32 values), else kUnroll
// single ones.
template <typename F>
__device__ __forceinline__ void for_each(const float* row, int64_t cols, F&& f) {
  if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int64_t n4 = cols / 4;
    for (int64_t base = threadIdx.x; base < n4; base += kUnroll4 * kThreads) {
      float4 v[kUnroll4];
#pragma unroll
      for (int j = 0; j < kUnroll4; ++j) {
        const int64_t i = base + static_cast<int64_t>(j) * kThreads;
        v[j] = i < n4 ? row4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int j = 0; j < kUnroll4; ++j) {
        const int64_t i = base + static_cast<int64_t>(j) * kThreads;
        if (i < n4) {
          f(v[j].x, 4 * i);
          f(v[j].y, 4 * i + 1);
          f(v[j].z, 4 * i + 2);
          f(v[j].w, 4 * i + 3);
        }
      }
    }
    for (int64_t i = 4 * n4 + threadIdx.x; i < cols; i += kThreads) f(row[i], i);
    return;
  }
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

// Columns [begin, end) of a row: f(value, column).
template <typename F>
__device__ __forceinline__ void for_each(const float* row, int64_t begin, int64_t end, F&& f) {
  for_each(row + begin, end - begin, [&](float v, int64_t i) { f(v, begin + i); });
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

// Dynamic shared memory of a block (~184 KiB).
struct Shared {
  uint32_t logit_c[kLogitBins];        // the row's tokens by logit bin,
  uint32_t logit_lo[kLogitBins];       // and their weights: the low words' sum mod 2^32, and the
  uint32_t logit_hi[kLogitBins];       // high words' sum plus the low sum's wraps (32-bit atomics)
  uint64_t thread_w[kBins][kThreads];  // each thread's bins of a radix level (no atomics)
  uint32_t thread_c[kBins][kThreads];
  uint64_t cand_key[kCompact];  // gathered candidates, in no particular order
  uint64_t cand_w[kCompact];
  uint64_t level_w[kBins];  // a radix level's bins summed over the block
  uint32_t level_c[kBins];
  int n_cand;             // gathered candidates
  int pick;               // the logit bin a selection falls in
  uint64_t pick_above_w;  // the kept weight and count of the logit bins before it
  uint32_t pick_above_c;
  int last_kept;            // the last non-empty kept logit bin
  uint64_t warp_w[kWarps];  // a block scan's per-warp sums
  uint32_t warp_c[kWarps];
  uint64_t prefix, above_w;  // radix descent: key bits fixed so far; the weight and count of the
  uint32_t above_c, bin_c;   // candidates ordered before the chosen bin; the chosen bin's count
  uint64_t bin_w;
  uint64_t key_and, key_or;   // over the candidates: the bits they all have, and any has
  uint64_t rank_key, rank_w;  // rank_select's answer
  uint32_t rank_c;
};

struct RowState {
  const float* row;
  int64_t cols;
  float max_logit, inverse_t;
  float bin_scale;  // logit bins per unit of (logit - max) / T
  uint64_t lo = 0;  // the kept tokens: key >= lo
  __device__ uint64_t weight(float v) const { return sampling_weight(v, max_logit, inverse_t); }
  // The logit bin of a value: 0 for the largest logit, rising as the weight falls, the last bin
  // for weight 0 (and NaN). Rounding is monotone, so a larger key never has a later bin.
  __device__ int logit_bin(float v) const {
    if (v == max_logit) return 0;
    const float x = sampling_scaled_logit(v, max_logit, inverse_t);
    if (!(x > kSampleWeightCutoff)) return kLogitBins - 1;  // weight 0, as sampling_weight says
    return min(kLogitBins - 2, static_cast<int>(-x * bin_scale));
  }
};

// Gathers the row's tokens with key >= lo that pass `keep(value, key)` into the candidate list.
template <typename Keep>
__device__ void gather(Shared& s, const RowState& r, Keep keep) {
  if (threadIdx.x == 0) s.n_cand = 0;
  __syncthreads();
  for_each(r.row, r.cols, [&](float v, int64_t i) {
    const uint64_t key = sampling_order_key(v, i);
    if (key < r.lo || !keep(v, key)) return;
    const int at = atomicAdd(&s.n_cand, 1);
    s.cand_key[at] = key;
    s.cand_w[at] = r.weight(v);
  });
  __syncthreads();
}

// A selection's target and how the running total must reach it.
struct Target {
  bool by_count;  // the running count (top-k) instead of the running weight
  bool strict;    // must pass (the draw) instead of reach
  uint64_t value;
  __device__ bool reached(uint64_t w, uint32_t c) const {
    return by_count ? c >= value : strict ? w > value : w >= value;
  }
};

// descend() over a gathered list of at most kRankMax: each candidate's running totals are the
// sums over the candidates with larger keys (n^2 / kThreads compares a thread, a few hundred), and
// the chosen one is the candidate at which the target is first reached.
__device__ uint64_t rank_select(Shared& s, const RowState& r, const Target& t, uint64_t above_w,
                                uint32_t above_c, uint64_t* through_w, uint32_t* through_c) {
  const int n = s.n_cand;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const uint64_t key = s.cand_key[i];
    if (key < r.lo) continue;
    uint64_t before_w = above_w;
    uint32_t before_c = above_c, kept = 0;
    for (int j = 0; j < n; ++j) {  // every thread reads the same j: a broadcast
      const uint64_t other = s.cand_key[j];
      kept += other >= r.lo;
      if (other > key) {
        before_w += s.cand_w[j];
        ++before_c;
      }
    }
    const uint64_t w = before_w + s.cand_w[i];
    const uint32_t c = before_c + 1;
    const bool last = c - above_c == kept;  // the last kept candidate: where an unreached walk ends
    const bool first = before_c == above_c;  // reached with nothing before it (a target of 0)
    if (t.reached(w, c) ? !t.reached(before_w, before_c) || first : last) {
      s.rank_key = key;
      s.rank_w = w;
      s.rank_c = c;
    }
  }
  __syncthreads();
  const uint64_t key = s.rank_key;
  *through_w = s.rank_w;
  *through_c = s.rank_c;
  __syncthreads();  // read before a later selection writes them
  return key;
}

// Radix descent: the first candidate (key >= r.lo, in key order from the top) at which the
// running total, starting from (above_w, above_c), reaches the target; the last candidate when it
// never does. Candidates are the gathered list (compact) or the whole row. Sets *through_w /
// *through_c to the running totals through the chosen token. Every thread calls it and gets the
// answer.
__device__ uint64_t descend(Shared& s, const RowState& r, bool compact, const Target& t,
                            uint64_t above_w, uint32_t above_c, uint64_t* through_w,
                            uint32_t* through_c) {
  if (compact && s.n_cand <= kRankMax)
    return rank_select(s, r, t, above_w, above_c, through_w, through_c);
  int shift = 64 - kBits;  // the level's key bits
  uint64_t mask = 0;       // the key bits fixed so far
  if (threadIdx.x == 0) {
    s.prefix = 0;
    s.above_w = above_w;
    s.above_c = above_c;
    s.key_and = ~uint64_t{0};
    s.key_or = 0;
  }
  __syncthreads();
  if (compact) {  // skip the levels above the highest bit in which the candidates differ
    uint64_t all = ~uint64_t{0}, any = 0;
    for (int j = threadIdx.x; j < s.n_cand; j += kThreads) {
      const uint64_t key = s.cand_key[j];
      if (key >= r.lo) {
        all &= key;
        any |= key;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      all &= __shfl_xor_sync(0xffffffffu, all, o);
      any |= __shfl_xor_sync(0xffffffffu, any, o);
    }
    if (threadIdx.x % 32 == 0) {
      atomicAnd(reinterpret_cast<unsigned long long*>(&s.key_and), all);
      atomicOr(reinterpret_cast<unsigned long long*>(&s.key_or), any);
    }
    __syncthreads();
    const uint64_t differ = s.key_and ^ s.key_or;
    shift = differ == 0 ? 0 : (63 - __clzll(static_cast<long long>(differ))) / kBits * kBits;
    mask = shift + kBits >= 64 ? 0 : ~uint64_t{0} << (shift + kBits);
    __syncthreads();  // every thread has read key_and before thread 0 writes the prefix
    if (threadIdx.x == 0) s.prefix = s.key_and & mask;
    __syncthreads();
  }
  for (;; shift -= kBits) {
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
        if (key >= r.lo && (key & mask) == prefix) add(key, r.weight(v));
      });
    }
    __syncthreads();
    {  // warp w sums bin w over the block's threads
      const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
      uint64_t w = 0;
      uint32_t c = 0;
      for (int k = lane; k < kThreads; k += 32) {
        w += s.thread_w[warp][k];
        c += s.thread_c[warp][k];
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
      // Bins from the highest key down, as the CPU walks its sorted tokens.
      uint64_t acc_w = s.above_w, before_w = acc_w;
      uint32_t acc_c = s.above_c, before_c = acc_c;
      int pick = -1;
      for (int d = kBins - 1; d >= 0; --d) {
        if (s.level_c[d] == 0) continue;
        pick = d;
        before_w = acc_w;
        before_c = acc_c;
        acc_w += s.level_w[d];
        acc_c += s.level_c[d];
        if (t.reached(acc_w, acc_c)) break;  // else the loop ends on the lowest bin
      }
      // pick < 0 only without candidates, which a descent never has (its first token is kept).
      s.prefix |= static_cast<uint64_t>(pick < 0 ? 0 : pick) << shift;
      s.above_w = before_w;
      s.above_c = before_c;
      s.bin_w = pick < 0 ? 0 : s.level_w[pick];
      s.bin_c = pick < 0 ? 0 : s.level_c[pick];
    }
    __syncthreads();
    mask |= static_cast<uint64_t>(kBins - 1) << shift;
    const uint64_t chosen = s.prefix;
    const uint32_t in_bin = s.bin_c;
    if (!compact && in_bin <= kCompact) {  // few enough to hold: on in shared memory
      gather(s, r, [&](float, uint64_t key) { return (key & mask) == chosen; });
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

// A bin's weight from its two words.
__device__ __forceinline__ uint64_t logit_weight(const Shared& s, int b) {
  return (static_cast<uint64_t>(s.logit_hi[b]) << 32) + s.logit_lo[b];
}

// The kept part of the logit histogram: bins before `cut` whole, bin `cut` with (cut_w, cut_c)
// (the tokens of it at or above the last cut-off), none after.
struct Kept {
  int cut = kLogitBins;  // no cut yet
  uint64_t cut_w = 0;
  uint32_t cut_c = 0;
  __device__ uint64_t w(const Shared& s, int b) const {
    return b < cut ? logit_weight(s, b) : b == cut ? cut_w : 0;
  }
  __device__ uint32_t c(const Shared& s, int b) const {
    return b < cut ? s.logit_c[b] : b == cut ? cut_c : 0;
  }
};
constexpr int kBinsPerThread = kLogitBins / kThreads;
static_assert(kLogitBins % kThreads == 0, "whole bins a thread");

// The kept weight and count of this thread's bins (kBinsPerThread consecutive ones), and its last
// non-empty kept bin (-1: none).
__device__ void thread_bins(const Shared& s, const Kept& k, uint64_t* w, uint32_t* c, int* last) {
  *w = 0;
  *c = 0;
  *last = -1;
  for (int b = threadIdx.x * kBinsPerThread; b < (threadIdx.x + 1) * kBinsPerThread; ++b) {
    const uint32_t bc = k.c(s, b);
    *w += k.w(s, b);
    *c += bc;
    if (bc > 0) *last = b;
  }
}

// The kept weight of the whole histogram; every thread gets it.
__device__ uint64_t kept_total(const Shared& s, const Kept& k) {
  uint64_t w;
  uint32_t c;
  int last;
  thread_bins(s, k, &w, &c, &last);
  return block_sum<kThreads>(w);
}

// The logit bin in which the kept running total reaches the target (the last non-empty kept bin
// if it never does), into s.pick with the kept totals of the bins before it. Threads own
// consecutive bins; a block scan gives each the totals before its bins, and the thread whose bins
// hold the crossing walks them.
__device__ void pick_logit_bin(Shared& s, const Kept& k, const Target& t) {
  uint64_t w;
  uint32_t c;
  int last;
  thread_bins(s, k, &w, &c, &last);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint64_t incl_w = w;  // inclusive scan over the warp
  uint32_t incl_c = c;
  int warp_last = last;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t ow = __shfl_up_sync(0xffffffffu, incl_w, o);
    const uint32_t oc = __shfl_up_sync(0xffffffffu, incl_c, o);
    if (lane >= o) {
      incl_w += ow;
      incl_c += oc;
    }
  }
  warp_last = __reduce_max_sync(0xffffffffu, warp_last);
  if (lane == 31) {
    s.warp_w[warp] = incl_w;
    s.warp_c[warp] = incl_c;
  }
  if (threadIdx.x == 0) s.last_kept = -1;
  __syncthreads();
  if (lane == 0 && warp_last >= 0) atomicMax(&s.last_kept, warp_last);
  for (int v = 0; v < warp; ++v) {  // the warps before this one
    incl_w += s.warp_w[v];
    incl_c += s.warp_c[v];
  }
  __syncthreads();
  const uint64_t before_w = incl_w - w;
  const uint32_t before_c = incl_c - c;
  // The thread where the running total first reaches the target (the first one holding kept
  // tokens when it is reached with none, as a top-p target of 0 is).
  const bool crossing =
      t.reached(incl_w, incl_c) && (!t.reached(before_w, before_c) || (before_c == 0 && c > 0));
  const bool unreached_last = !t.reached(incl_w, incl_c) && last >= 0 && last == s.last_kept;
  if (crossing || unreached_last) {  // one thread: the target is reached once, or never
    uint64_t acc_w = before_w;
    uint32_t acc_c = before_c;
    int pick = last;
    for (int b = threadIdx.x * kBinsPerThread; b < (threadIdx.x + 1) * kBinsPerThread; ++b) {
      const uint32_t bc = k.c(s, b);
      if (bc == 0) continue;
      if (t.reached(acc_w + k.w(s, b), acc_c + bc) || b == last) {
        pick = b;
        break;
      }
      acc_w += k.w(s, b);
      acc_c += bc;
    }
    s.pick = pick;
    s.pick_above_w = acc_w;
    s.pick_above_c = acc_c;
  }
}

// One selection (top-k, top-p or the draw) over the kept tokens: its logit bin from the
// histogram, then the token inside that bin from its gathered tokens (a radix descent over the
// whole row when the bin holds more than kCompact). Moves the cut-off to the chosen token and
// returns it; *through_w is the running weight through it.
__device__ uint64_t select_kept(Shared& s, RowState& r, Kept& k, int& gathered_bin, const Target& t,
                                uint64_t* through_w) {
  pick_logit_bin(s, k, t);
  __syncthreads();
  const int bin = s.pick;                    // the chosen token's logit bin
  const uint64_t before_w = s.pick_above_w;  // the kept totals of the bins before it
  const uint32_t before_c = s.pick_above_c;
  uint64_t key;
  uint32_t through_c;
  if (s.logit_c[bin] <= kCompact) {
    if (gathered_bin != bin) gather(s, r, [&](float v, uint64_t) { return r.logit_bin(v) == bin; });
    gathered_bin = bin;
    key = descend(s, r, true, t, before_w, before_c, through_w, &through_c);
  } else {  // a crowded bin (many tied or close logits): the descent over the whole row
    // Sums are exact, so it ends in the bin picked above: the crossing, or the last kept token.
    key = descend(s, r, false, t, 0, 0, through_w, &through_c);
    gathered_bin = -1;  // the list now holds one radix bin
  }
  k.cut = bin;
  k.cut_w = *through_w - before_w;
  k.cut_c = through_c - before_c;
  r.lo = key;
  __syncthreads();  // s.pick and friends are read before the next selection writes them
  return key;
}

// Chunk `c` of a row split into `chunks`: columns [*begin, *end), whole float4s but the last.
__device__ __forceinline__ void chunk_columns(int64_t cols, int chunks, int c, int64_t* begin,
                                              int64_t* end) {
  const int64_t len = ((cols + chunks - 1) / chunks + 3) / 4 * 4;
  *begin = min(cols, c * len);
  *end = min(cols, *begin + len);
}

// The row's first key (the largest logit's, the greedy answer) and last key (the smallest
// logit's) from its chunks' ends.
__device__ __forceinline__ void row_ends(const RowWorkspace& ws, int chunks, uint64_t* first,
                                         uint64_t* last) {
  uint64_t f = 0, l = 0;  // l as its complement
  for (int c = 0; c < chunks; ++c) {
    f = ws.ends[2 * c] > f ? ws.ends[2 * c] : f;
    l = ws.ends[2 * c + 1] > l ? ws.ends[2 * c + 1] : l;
  }
  *first = f;
  *last = ~l;
}

// The weights' and logit bins' scale of a row at temperature p.temperature (> 0).
__device__ RowState row_state(const float* row, int64_t cols, uint64_t first, uint64_t last,
                              const RowParams& p) {
  RowState r;
  r.row = row;
  r.cols = cols;
  r.max_logit = row[sampling_key_id(first)];
  r.inverse_t = sampling_inverse_temperature(p.temperature);
  // Bins span the logits' range in units of T, up to the cut-off where weights reach 0.
  const float span = -sampling_scaled_logit(row[sampling_key_id(last)], r.max_logit, r.inverse_t);
  r.bin_scale = static_cast<float>(kLogitBins - 2) /
                (span > 1e-3f && span < -kSampleWeightCutoff ? span : -kSampleWeightCutoff);
  return r;
}

// Pass 1, block (chunk, row): the chunk's first and last keys; it also zeroes its share of the
// row's histogram for pass 2.
__global__ void __launch_bounds__(kThreads)
    sample_ends_kernel(const float* x, int64_t cols, RowWorkspace* workspace) {
  wait_for_previous_kernel();
  const int c = blockIdx.x, chunks = gridDim.x;
  RowWorkspace& ws = workspace[blockIdx.y];
  int64_t begin, end;
  chunk_columns(cols, chunks, c, &begin, &end);
  uint64_t first = 0, last = 0;  // last as its complement
  for_each(x + static_cast<int64_t>(blockIdx.y) * cols, begin, end, [&](float v, int64_t i) {
    const uint64_t key = sampling_order_key(v, i);
    first = key > first ? key : first;
    last = ~key > last ? ~key : last;
  });
  first = block_max(first);
  last = block_max(last);
  if (threadIdx.x == 0) {
    ws.ends[2 * c] = first;
    ws.ends[2 * c + 1] = last;
  }
  for (int b = c * kThreads + threadIdx.x; b < kLogitBins; b += chunks * kThreads) {
    ws.hist_c[b] = 0;
    ws.hist_lo[b] = 0;
    ws.hist_hi[b] = 0;
  }
}

// Pass 2, block (chunk, row) of a sampled row: the chunk's logit histogram in shared memory, then
// added into the row's with global atomics. Each weight's two words are summed as 32-bit words
// (the low word modulo 2^32, its wraps carried into the high word), so the sum is exact.
__global__ void __launch_bounds__(kThreads)
    sample_histogram_kernel(const float* x, int64_t cols, const int32_t* params,
                            RowWorkspace* workspace) {
  __shared__ uint32_t bin_c[kLogitBins], bin_lo[kLogitBins], bin_hi[kLogitBins];
  // Every block waits before anything else, greedy ones too: pass 3 reads pass 1's ends, ordered
  // only through this kernel's completion (programmatic launch waits for the kernel just ahead).
  wait_for_previous_kernel();
  const RowParams p = read_params(params + static_cast<int64_t>(blockIdx.y) * kParamWords);
  if (!(p.temperature > 0.0)) return;  // greedy: pass 1 found the token
  RowWorkspace& ws = workspace[blockIdx.y];
  const int c = blockIdx.x, chunks = gridDim.x;
  uint64_t first, last;
  row_ends(ws, chunks, &first, &last);
  const float* row = x + static_cast<int64_t>(blockIdx.y) * cols;
  const RowState r = row_state(row, cols, first, last, p);
  for (int b = threadIdx.x; b < kLogitBins; b += kThreads) {
    bin_c[b] = 0;
    bin_lo[b] = 0;
    bin_hi[b] = 0;
  }
  __syncthreads();
  int64_t begin, end;
  chunk_columns(cols, chunks, c, &begin, &end);
  uint32_t zero = 0;  // tokens of the last bin (weight 0): often most of them, so counted here
  for_each(row, begin, end, [&](float v, int64_t) {
    const int b = r.logit_bin(v);
    if (b == kLogitBins - 1) {
      ++zero;
      return;
    }
    const uint64_t w = r.weight(v);
    const uint32_t lo = static_cast<uint32_t>(w), hi = static_cast<uint32_t>(w >> 32);
    atomicAdd(&bin_c[b], 1u);
    const uint32_t old = atomicAdd(&bin_lo[b], lo);
    const uint32_t wrapped = old + lo < old;  // the low sum passed 2^32
    if (hi + wrapped > 0) atomicAdd(&bin_hi[b], hi + wrapped);
  });
  if (zero > 0) atomicAdd(&bin_c[kLogitBins - 1], zero);
  __syncthreads();
  for (int b = threadIdx.x; b < kLogitBins; b += kThreads) {
    if (bin_c[b] == 0) continue;
    atomicAdd(&ws.hist_c[b], bin_c[b]);
    const uint32_t old = atomicAdd(&ws.hist_lo[b], bin_lo[b]);
    const uint32_t wrapped = old + bin_lo[b] < old;
    if (bin_hi[b] + wrapped > 0) atomicAdd(&ws.hist_hi[b], bin_hi[b] + wrapped);
  }
}

// Pass 3, one block a row: the selections over the row's histogram and its gathered bins.
__global__ void __launch_bounds__(kThreads)
    sample_rows_kernel(const float* x, int64_t cols, const int32_t* params,
                       const RowWorkspace* workspace, int chunks, int32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  Shared& s = *reinterpret_cast<Shared*>(smem);
  wait_for_previous_kernel();  // pass 2 has finished, so pass 1 had too: the ends are written
  const RowWorkspace& ws = workspace[blockIdx.x];
  const RowParams p = read_params(params + static_cast<int64_t>(blockIdx.x) * kParamWords);
  uint64_t first, last;
  row_ends(ws, chunks, &first, &last);
  if (!(p.temperature > 0.0)) {  // 0 (the host refuses negative ones): greedy
    if (threadIdx.x == 0) out[blockIdx.x] = sampling_key_id(first);
    return;
  }
  RowState r = row_state(x + static_cast<int64_t>(blockIdx.x) * cols, cols, first, last, p);
  for (int b = threadIdx.x; b < kLogitBins; b += kThreads) {
    s.logit_c[b] = ws.hist_c[b];
    s.logit_lo[b] = ws.hist_lo[b];
    s.logit_hi[b] = ws.hist_hi[b];
  }
  __syncthreads();

  Kept k;
  int gathered_bin = -1;
  uint64_t kept_w = kept_total(s, k);
  if (p.top_k > 0 && p.top_k < cols)
    select_kept(s, r, k, gathered_bin, Target{true, false, static_cast<uint64_t>(p.top_k)},
                &kept_w);
  if (p.top_p < 1.0)
    select_kept(s, r, k, gathered_bin, Target{false, false, top_p_target(p.top_p, kept_w)},
                &kept_w);
  uint64_t through = 0;
  const uint64_t target = draw_target(sampling_uniform(p.seed, p.draw), kept_w);
  const uint64_t drawn = select_kept(s, r, k, gathered_bin, Target{false, true, target}, &through);
  if (threadIdx.x == 0) out[blockIdx.x] = sampling_key_id(drawn);
}

// Chunks per row for the first two passes: about two blocks per SM over the batch, each chunk at
// least kMinChunkCols logits, at most kMaxChunks. MOEX_SAMPLE_CHUNKS=N in the environment fixes N
// (1: one block a row, to measure the split against).
int sample_chunks(int64_t rows, int64_t cols) {
  static const int forced =
      static_cast<int>(std::min<int64_t>(kMaxChunks, env_count("MOEX_SAMPLE_CHUNKS", 0)));
  if (forced > 0) return forced;
  const int64_t by_grid = (2 * current_device_sms() + rows - 1) / rows;
  const int64_t by_size = cols / kMinChunkCols;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({by_grid, by_size, kMaxChunks})));
}

}  // namespace

size_t sample_rows_workspace_bytes(int64_t rows) {
  return static_cast<size_t>(rows) * sizeof(RowWorkspace);
}

void sample_rows_f32(const float* x, int64_t rows, int64_t cols, const int32_t* params,
                     void* workspace, int32_t* out, cudaStream_t stream, int chunks) {
  MOEX_CHECK(chunks >= 0 && chunks <= kMaxChunks, "sample_rows: chunks must be in [0, ", kMaxChunks,
             "], got ", chunks);
  if (rows == 0) return;
  MOEX_CHECK(rows <= 65535, "sample_rows: ", rows, " rows are more than one launch's 65535");
  MOEX_CHECK(reinterpret_cast<uintptr_t>(workspace) % alignof(RowWorkspace) == 0,
             "sample_rows: the workspace must be 8-byte aligned");
  static bool smem_allowed = false;  // above 48 KiB needs the opt-in, once
  if (!smem_allowed) {
    CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(sizeof(Shared))));
    smem_allowed = true;
  }
  RowWorkspace* ws = static_cast<RowWorkspace*>(workspace);
  if (chunks == 0) chunks = sample_chunks(rows, cols);
  const dim3 chunk_grid(static_cast<unsigned>(chunks), static_cast<unsigned>(rows));
  launch_kernel(sample_ends_kernel, chunk_grid, kThreads, 0, stream, x, cols, ws);
  launch_kernel(sample_histogram_kernel, chunk_grid, kThreads, 0, stream, x, cols, params, ws);
  launch_kernel(sample_rows_kernel, static_cast<unsigned>(rows), kThreads, sizeof(Shared), stream,
                x, cols, params, static_cast<const RowWorkspace*>(ws), chunks, out);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace moex::cuda
