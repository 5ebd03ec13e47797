#include <algorithm>
#include <cfloat>
#include <climits>
#include <type_traits>

#include "core/arena.h"
#include "core/rng.h"
#include "cuda/bf16_chunk.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/last_block.cuh"
#include "cuda/launch.cuh"
#include "cuda/moe_gating.h"
#include "moe/router.h"

namespace moex::cuda {
namespace {

// One launch, two phases. Phase A (wide): each block takes kBlockTokens tokens, one warp per token
// (kTokensPerWarp in turn), the token's E scores spread over the lanes (lane l holds experts l,
// l+32, ...). Softmax sums run in expert order (shuffles), so the scores are the same floats as a
// sequential loop; top-k is k rounds of warp arg-max on the CPU's double keys (ties -> lower
// expert; a token with a NaN key falls back to a warp-serial scan with the CPU's exact semantics).
// The block then ranks its routes per (choice j, expert) in token order (__match_any_sync) and
// writes per-block counts cnt[e][j][b] and loss partials. The last block to finish (a counter in
// the workspace, after a fence) runs phase B alone: an exclusive scan of cnt over (j, b) per expert
// gives every route's rank in the CPU's position order (choice-major, then token order), then the
// drop policy, offsets, the dispatch table, the gates and the losses. All reductions run in a fixed
// order: deterministic, and the routing equals build_dispatch_plan's.
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kTokensPerWarp = 2;
constexpr int kBlockTokens = kWarps * kTokensPerWarp;  // 64
static_assert(kWarps == 32, "block_rank_by_expert scans one warp count per lane");
static_assert(kBlockTokens % 32 == 0 && kMaxGatingTopK * kBlockTokens <= kThreads,
              "phase A ranks k * kBlockTokens routes, one per thread");

struct Workspace {
  int* counter;     // [1] blocks done; the last block resets it
  double* block_p;  // [blocks, E] sum over the block's tokens of p[t, e]
  int* cnt;         // [E, k, blocks] routes per (expert, choice, block); phase B: exclusive scan
  double* block_z;  // [blocks] sum of lse^2
  int* lrank;       // [T*k] rank within (block, choice, expert) in token order
  int* rank;        // [T*k]
  int* list;        // [T*k] routes grouped by expert (probs / rts)
  float* list_key;  // [T*k]
  int* keep;        // [T*k]
};

int64_t num_blocks(int64_t num_tokens) {
  return std::max<int64_t>(1, ceil_div(num_tokens, kBlockTokens));
}

Workspace carve(void* base, int64_t num_tokens, int num_experts, int top_k) {
  const int64_t blocks = num_blocks(num_tokens);
  const int64_t routes = num_tokens * top_k;
  char* p = static_cast<char*>(base);
  Workspace w;
  w.counter = reinterpret_cast<int*>(p);
  p += 256;
  w.block_p = reinterpret_cast<double*>(p);
  p += aligned_bytes(sizeof(double) * blocks * num_experts);
  w.cnt = reinterpret_cast<int*>(p);
  p += aligned_bytes(sizeof(int) * blocks * num_experts * top_k);
  w.block_z = reinterpret_cast<double*>(p);
  p += aligned_bytes(sizeof(double) * blocks);
  w.lrank = reinterpret_cast<int*>(p);
  p += aligned_bytes(sizeof(int) * routes);
  w.rank = reinterpret_cast<int*>(p);
  p += aligned_bytes(sizeof(int) * routes);
  w.list = reinterpret_cast<int*>(p);
  p += aligned_bytes(sizeof(int) * routes);
  w.list_key = reinterpret_cast<float*>(p);
  p += aligned_bytes(sizeof(float) * routes);
  w.keep = reinterpret_cast<int*>(p);
  return w;
}

size_t workspace_bytes(int64_t num_tokens, int num_experts, int top_k) {
  const int64_t blocks = num_blocks(num_tokens);
  const int64_t routes = num_tokens * top_k;
  return 256 + aligned_bytes(sizeof(double) * blocks * num_experts) +
         aligned_bytes(sizeof(int) * blocks * num_experts * top_k) +
         aligned_bytes(sizeof(double) * blocks) + 4 * aligned_bytes(sizeof(int) * routes) +
         aligned_bytes(sizeof(float) * routes);
}

// Block-wide stable ranking: items i = 0..n-1 in order; item(i) gives its expert or -1 (skipped);
// out(i, rank) receives the number of earlier items with the same expert. s_base [E] holds running
// totals (in and out); s_wc [E * kWarps] is scratch (expert-major). All threads of the block must
// call it. (Phase B's token-order re-ranking under the probs / rts policies.)
template <class ItemFn, class OutFn>
__device__ void block_rank_by_expert(int64_t n, int num_experts, ItemFn item, OutFn out, int* s_wc,
                                     int* s_base) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int64_t chunk = 0; chunk < n; chunk += kThreads) {
    const int64_t i = chunk + tid;
    const int e = i < n ? item(i) : -1;
    for (int x = tid; x < kWarps * num_experts; x += kThreads) s_wc[x] = 0;
    __syncthreads();
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int in_warp = __popc(peers & ((1u << lane) - 1u));
    if (e >= 0 && lane == __ffs(peers) - 1) s_wc[e * kWarps + warp] = __popc(peers);
    __syncthreads();
    // Exclusive scan over the kWarps (= 32) warp counts of each expert: one warp per expert, lane
    // w holds warp w's count (expert-major layout: conflict-free), shuffle scan, integer-exact.
    for (int ee = warp; ee < num_experts; ee += kWarps) {
      const int c = s_wc[ee * kWarps + lane];
      int incl = c;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
      }
      const int base = s_base[ee];
      __syncwarp();
      s_wc[ee * kWarps + lane] = base + incl - c;
      if (lane == 31) s_base[ee] = base + incl;
    }
    __syncthreads();
    if (e >= 0) out(i, s_wc[e * kWarps + warp] + in_warp);
    __syncthreads();
  }
}

// Sum over experts 0..E-1 in expert order of v (lane l, slot i holds expert 32 i + l), in Acc:
// the same additions in the same order as `for (e) acc += v[e]`. Every lane gets the result.
template <int VPT, class Acc>
__device__ Acc ordered_sum(const float (&v)[VPT], int num_experts) {
  Acc acc = Acc(0);
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int n = min(32, num_experts - i * 32);
#pragma unroll 8
    for (int l = 0; l < n; ++l) acc += static_cast<Acc>(__shfl_sync(0xffffffffu, v[i], l));
  }
  return acc;
}

// One token's routing by one warp from its logits zt [E] (lane l takes experts l, l + 32, ...). Scores (softmax or
// sigmoid, sums in expert order), then top-k as k rounds of warp arg-max on the CPU's double keys
// (router_select: s or z + Gumbel, + bias; ties to the lower expert; a NaN key falls back to a
// warp-serial scan with the CPU's exact semantics). Writes out.scores[t], out.expert and
// out.route_score of the token's routes, and (lane 0) sel[0..k), *norm_out (the sigmoid sum, 1 for
// softmax) and *lse2_out (the z-loss term).
template <int VPT>
__device__ void route_token(const float* __restrict__ zt, const float* __restrict__ bias,
                            const GatingParams& p, const GatingOutputs& out, int64_t t, int* sel,
                            float* norm_out, double* lse2_out) {
  constexpr unsigned kFull = 0xffffffffu;
  const int E = p.num_experts, k = p.top_k, lane = threadIdx.x & 31;
  float z[VPT];  // L2 reads: the logits may come from other blocks of the same launch
#pragma unroll
  for (int i = 0; i < VPT; ++i) z[i] = i * 32 + lane < E ? __ldcg(&zt[i * 32 + lane]) : -INFINITY;
  const uint64_t gumbel_stream = moe::moe_rng_offset(p.offset, moe::MoERngUse::kGumbel);
  float st[VPT];
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < VPT; ++i) m = fmaxf(m, z[i]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, off));
#pragma unroll
  for (int i = 0; i < VPT; ++i) st[i] = i * 32 + lane < E ? expf(z[i] - m) : 0.0f;
  const float sum = ordered_sum<VPT, float>(st, E);
  const float lse = m + logf(sum);
  double norm = 1.0;
  if (p.score_func == ScoreFunc::kSoftmax) {
#pragma unroll
    for (int i = 0; i < VPT; ++i) st[i] /= sum;
  } else {
#pragma unroll
    for (int i = 0; i < VPT; ++i) st[i] = 1.0f / (1.0f + expf(-z[i]));
    norm = ordered_sum<VPT, double>(st, E);
  }
  float* srow = out.scores + t * E;
#pragma unroll
  for (int i = 0; i < VPT; ++i)
    if (i * 32 + lane < E) srow[i * 32 + lane] = st[i];
  if (lane == 0) {
    *norm_out = static_cast<float>(norm);
    *lse2_out = static_cast<double>(lse) * lse;
  }
  // Top-k (router_select): key = s (or z + Gumbel), + bias; the best untaken key wins, ties to
  // the lower expert id. k rounds of warp arg-max.
  unsigned taken = 0;  // bit i: expert 32 i + lane already selected
  for (int j = 0; j < k; ++j) {
    const bool second = p.gumbel_second_expert && j >= 1;  // CPU: z + Gumbel, no bias
    const bool gumbel_key = p.rsample || second;
    double kv[VPT];
    bool has_nan = false;
    int lbest = INT_MAX;
    double lkey = -INFINITY;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int e = i * 32 + lane;
      double key = -INFINITY;
      if (e < E) {
        key = gumbel_key ? static_cast<double>(z[i]) +
                               static_cast<double>(philox_gumbel(p.seed, gumbel_stream,
                                                                 static_cast<uint64_t>(t * E + e)))
                         : static_cast<double>(st[i]);
        if (bias != nullptr && !second) key += static_cast<double>(bias[e]);
        has_nan |= key != key;
        if (!(taken >> i & 1u) && (lbest == INT_MAX || key > lkey)) {
          lbest = e;
          lkey = key;
        }
      }
      kv[i] = key;
    }
    int best;
    if (__any_sync(kFull, has_nan)) {
      // The CPU's sequential scan, exactly (a NaN key only wins as the first untaken expert).
      best = -1;
      double bkey = 0.0;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        const int n = min(32, E - i * 32);
        for (int l = 0; l < n; ++l) {
          const double key = __shfl_sync(kFull, kv[i], l);
          const bool tk = __shfl_sync(kFull, taken >> i & 1u, l) != 0u;
          if (!tk && (best < 0 || key > bkey)) {
            best = i * 32 + l;
            bkey = key;
          }
        }
      }
    } else {
      best = lbest;
      double bkey = lkey;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const double ok = __shfl_xor_sync(kFull, bkey, off);
        const int oi = __shfl_xor_sync(kFull, best, off);
        if (ok > bkey || (ok == bkey && oi < best)) {
          bkey = ok;
          best = oi;
        }
      }
    }
    float sv = 0.0f;
#pragma unroll
    for (int i = 0; i < VPT; ++i)
      if (i == (best >> 5)) sv = st[i];
    sv = __shfl_sync(kFull, sv, best & 31);
    if (lane == (best & 31)) taken |= 1u << (best >> 5);
    if (lane == 0) {
      out.expert[t * k + j] = best;
      out.route_score[t * k + j] = sv;
      sel[j] = best;
    }
  }
}

// The aux-loss terms summed in expert order and the largest load (one thread; both kernels).
__device__ void aux_total_and_max_load(const double* s_aux, const int* s_load, int num_experts,
                                       double& aux, int& max_load) {
  aux = 0.0;
  max_load = 0;
  for (int e = 0; e < num_experts; ++e) {
    aux += s_aux[e];
    max_load = max(max_load, s_load[e]);
  }
}

// The aux loss's weighting (router_aux_loss): DeepSpeed's top-1/top-2 loss counts first choices
// only; its top-k form scales by E / k.
struct AuxWeights {
  bool first_only;
  double factor;
};
__device__ AuxWeights aux_weights(const GatingParams& p) {
  const bool deepspeed = p.aux_loss_type == AuxLossType::kDeepSpeed;
  return {deepspeed && p.top_k <= 2, deepspeed && p.top_k > 2
                                         ? static_cast<double>(p.num_experts) / p.top_k
                                         : static_cast<double>(p.num_experts)};
}

// Per expert (one thread): loads, kept counts (at most C), the first row of each expert
// (padded: C rows each; packed: its count rounded up to row_align), rows in all, and info. s_lo
// [E + 1] gets the offsets. Returns the rows.
__device__ int write_counts_and_offsets(const int* s_load, int num_experts, int C, int max_load,
                                        int64_t num_routes, bool padded, int row_align,
                                        const GatingOutputs& out, int* s_lo) {
  int run = 0, kept = 0;
  for (int e = 0; e < num_experts; ++e) {
    const int cnt = min(s_load[e], C);
    out.load[e] = s_load[e];
    out.counts[e] = cnt;
    s_lo[e] = run;
    out.offsets[e] = run;
    run += padded ? C : (cnt + row_align - 1) / row_align * row_align;
    kept += cnt;
  }
  s_lo[num_experts] = run;
  out.offsets[num_experts] = run;
  out.info[0] = C;
  out.info[1] = run;
  out.info[2] = static_cast<int>(num_routes - kept);
  out.info[3] = max_load;
  return run;
}

// Phase A shared memory: s_part [kThreads] double, s_lse2 [kBlockTokens] double, s_norm
// [kBlockTokens] float, s_sel [kBlockTokens * k] int, s_wc [k * kBlockTokens / 32 * E] int.
size_t phase_a_smem(int num_experts, int top_k) {
  return sizeof(double) * (kThreads + kBlockTokens) + sizeof(float) * kBlockTokens +
         sizeof(int) * kBlockTokens * top_k +
         sizeof(int) * top_k * (kBlockTokens / 32) * num_experts;
}

size_t phase_b_smem(int num_experts) {
  return sizeof(int) * (kWarps * num_experts + 3 * num_experts + 4) +
         sizeof(double) * (num_experts + 1) + 16;
}

template <int VPT>
__global__ void __launch_bounds__(kThreads)
    gating_kernel(const float* __restrict__ logits, const float* __restrict__ bias, GatingParams p,
                  GatingOutputs out, int64_t max_rows, Workspace ws) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int E = p.num_experts, k = p.top_k;
  const int64_t T = p.num_tokens, num_routes = T * k;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nb = static_cast<int>(gridDim.x);
  const auto [first_only, factor] = aux_weights(p);
  constexpr unsigned kFull = 0xffffffffu;

  // ---------------- phase A: one warp per token ----------------
  double* s_part = reinterpret_cast<double*>(smem);                 // [kThreads]
  double* s_lse2 = s_part + kThreads;                               // [kBlockTokens]
  float* s_norm = reinterpret_cast<float*>(s_lse2 + kBlockTokens);  // [kBlockTokens]
  int* s_sel = reinterpret_cast<int*>(s_norm + kBlockTokens);       // [kBlockTokens * k]
  int* s_wc = s_sel + kBlockTokens * k;                             // [k * kBlockTokens / 32, E]
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBlockTokens;
  for (int q = 0; q < kTokensPerWarp; ++q) {
    const int tl = q * kWarps + warp;
    const int64_t t = t0 + tl;
    if (t >= T) {
      if (lane < k) s_sel[tl * k + lane] = -1;
      if (lane == 0) {
        s_norm[tl] = 1.0f;
        s_lse2[tl] = 0.0;
      }
      continue;
    }
    route_token<VPT>(logits + t * E, bias, p, out, t, s_sel + tl * k, s_norm + tl, s_lse2 + tl);
  }
  __syncthreads();
  const int64_t block_tokens = min(static_cast<int64_t>(kBlockTokens), T - t0);
  // Per-block sums of p[t, e] in a fixed order: G threads per expert, then the G partials.
  {
    const int groups = kThreads / E;
    const int e = tid % E, g = tid / E;
    double acc = 0.0;
    if (g < groups) {
      for (int64_t tl = g; tl < block_tokens; tl += groups)
        acc += static_cast<double>(out.scores[(t0 + tl) * E + e]) / s_norm[tl];
    }
    s_part[tid] = acc;
  }
  // Ranks within the block: item i = j * kBlockTokens + tl (choice-major, token order within), one
  // per thread; the warps of one choice are consecutive.
  constexpr int kWarpsPerChoice = kBlockTokens / 32;
  for (int x = tid; x < k * kWarpsPerChoice * E; x += kThreads) s_wc[x] = 0;
  __syncthreads();
  const int item_j = tid / kBlockTokens, item_tl = tid % kBlockTokens;
  const int item_e = tid < k * kBlockTokens ? s_sel[item_tl * k + item_j] : -1;
  const unsigned peers = __match_any_sync(kFull, item_e);
  const int in_warp = __popc(peers & ((1u << lane) - 1u));
  if (item_e >= 0 && lane == __ffs(peers) - 1) s_wc[warp * E + item_e] = __popc(peers);
  if (tid < E) {
    double total = 0.0;
    for (int gg = 0; gg < kThreads / E; ++gg) total += s_part[gg * E + tid];
    ws.block_p[static_cast<int64_t>(blockIdx.x) * E + tid] = total;
  }
  if (warp == kWarps - 1) {
    double z2 = 0.0;
    for (int x = lane; x < kBlockTokens; x += 32) z2 += s_lse2[x];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) z2 += __shfl_xor_sync(kFull, z2, off);
    if (lane == 0) ws.block_z[blockIdx.x] = z2;
  }
  __syncthreads();
  if (item_e >= 0) {
    int lr = in_warp;
    for (int w = item_j * kWarpsPerChoice; w < warp; ++w) lr += s_wc[w * E + item_e];
    ws.lrank[(t0 + item_tl) * k + item_j] = lr;
  }
  for (int x = tid; x < k * E; x += kThreads) {
    const int j = x / E, e = x - j * E;
    int c = 0;
    for (int w = j * kWarpsPerChoice; w < (j + 1) * kWarpsPerChoice; ++w) c += s_wc[w * E + e];
    ws.cnt[(static_cast<int64_t>(e) * k + j) * nb + blockIdx.x] = c;
  }

  // ---------------- hand-off: the last block continues ----------------
  if (!finished_last(ws.counter, static_cast<int>(gridDim.x))) return;

  // ---------------- phase B: the last block alone ----------------
  int* s_wcb = reinterpret_cast<int*>(smem);                                // [kWarps * E]
  int* s_base = s_wcb + kWarps * E;                                         // [E]
  int* s_load = s_base + E;                                                 // [E]
  int* s_lo = s_load + E;                                                   // [E + 1]
  double* s_aux = reinterpret_cast<double*>(s_lo + E + 2 + ((E + 2) & 1));  // [E] (8-byte aligned)
  __shared__ int s_capacity, s_max_load, s_rows;

  // Per expert (one warp each): exclusive scan of cnt[e] over (j, b) in place -> the position-order
  // rank of each (choice, block)'s first route; loads; loss statistics summed in a fixed order.
  for (int e = warp; e < E; e += kWarps) {
    int* c = ws.cnt + static_cast<int64_t>(e) * k * nb;
    const int n = k * nb;
    int carry = 0, first = 0;
    for (int x0 = 0; x0 < n; x0 += 32) {
      const int x = x0 + lane;
      const int v = x < n ? __ldcg(&c[x]) : 0;
      int incl = v;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int u = __shfl_up_sync(kFull, incl, off);
        if (lane >= off) incl += u;
      }
      if (x < n) c[x] = carry + incl - v;
      if (x < nb) first += v;
      carry += __shfl_sync(kFull, incl, 31);
    }
    double psum = 0.0;
    for (int b = lane; b < nb; b += 32)
      psum += __ldcg(&ws.block_p[static_cast<int64_t>(b) * E + e]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      psum += __shfl_xor_sync(kFull, psum, off);
      first += __shfl_xor_sync(kFull, first, off);
    }
    if (lane == 0) {
      const int cnt = first_only ? first : carry;
      const double frac = static_cast<double>(cnt) / T;
      s_load[e] = carry;
      s_aux[e] = (psum / T) * frac;
      out.aux_grad[e] = static_cast<float>(factor * frac / T);
    }
  }
  __syncthreads();
  if (warp == 0) {
    double z = 0.0;
    for (int b = lane; b < nb; b += 32) z += __ldcg(&ws.block_z[b]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) z += __shfl_xor_sync(kFull, z, off);
    if (lane == 0) {
      double aux;
      int mx;
      aux_total_and_max_load(s_aux, s_load, E, aux, mx);
      out.losses[0] = p.aux_loss_type == AuxLossType::kNone ? 0.0 : aux * factor;
      out.losses[1] = z / T;
      s_max_load = mx;
      s_capacity = p.dropless ? mx : static_cast<int>(p.capacity);
    }
  }
  __syncthreads();
  const int C = s_capacity;
  const int32_t* expert = out.expert;
  // Position-order rank of route r = (t, j): its (expert, choice, block) base + its rank within.
  auto position_rank = [&](int64_t r, int64_t tt, int j, int e) {
    return __ldcg(&ws.cnt[(static_cast<int64_t>(e) * k + j) * nb + tt / kBlockTokens]) +
           __ldcg(&ws.lrank[r]);
  };
  const bool fast = p.dropless || p.policy == DropPolicy::kPosition;

  if (!fast) {
    for (int64_t r = tid; r < num_routes; r += kThreads) {
      const int64_t tt = r / k;
      const int j = static_cast<int>(r - tt * k);
      ws.rank[r] = position_rank(r, tt, j, __ldcg(&expert[r]));
    }
    // Group routes by expert (position order within), rank each group by its key, keep the best C
    // (ties: earlier in position order, as std::stable_sort), then slots in token order.
    if (tid == 0) {
      int run = 0;
      for (int e = 0; e < E; ++e) {
        s_lo[e] = run;
        run += s_load[e];
      }
      s_lo[E] = run;
    }
    __syncthreads();
    const uint64_t rts_stream = moe::moe_rng_offset(p.offset, moe::MoERngUse::kRts);
    for (int64_t r = tid; r < num_routes; r += kThreads) {
      const int pos = s_lo[__ldcg(&expert[r])] + ws.rank[r];
      ws.list[pos] = static_cast<int>(r);
      ws.list_key[pos] = p.policy == DropPolicy::kProbs
                             ? __ldcg(&out.route_score[r])
                             : philox_uniform(p.seed, rts_stream, static_cast<uint64_t>(r));
    }
    __syncthreads();
    for (int64_t i = tid; i < num_routes; i += kThreads) {
      const int r = ws.list[i];
      const int e = __ldcg(&expert[r]);
      int keep = 1;
      if (s_load[e] > C) {
        const float key = ws.list_key[i];
        int better = 0;
        for (int x = s_lo[e]; x < s_lo[e + 1]; ++x) {
          const float other = ws.list_key[x];
          better += (other > key) || (other == key && x < i);
        }
        keep = better < C;
      }
      ws.keep[r] = keep;
    }
    for (int e = tid; e < E; e += kThreads) s_base[e] = 0;
    __syncthreads();
    block_rank_by_expert(
        num_routes, E, [&](int64_t r) { return __ldcg(&ws.keep[r]) ? __ldcg(&expert[r]) : -1; },
        [&](int64_t r, int rank) { out.slot[r] = rank; }, s_wcb, s_base);
    for (int64_t r = tid; r < num_routes; r += kThreads)
      if (!ws.keep[r]) out.slot[r] = -1;
    __syncthreads();
  }

  // Counts, offsets, info.
  if (tid == 0)
    s_rows = write_counts_and_offsets(s_load, E, C, s_max_load, num_routes, p.padded, p.row_align,
                                      out, s_lo);
  __syncthreads();
  const int64_t rows = s_rows;
  const bool write_rows = rows <= max_rows;
  if (write_rows) {
    for (int64_t x = tid; x < rows; x += kThreads) out.gather[x] = -1;
    __syncthreads();
  }
  if (fast) {
    // One thread per token: slots (rank < C), rows, the gather table and the gates (router_gates:
    // renormalization sums in double over the selected or kept routes, in choice order).
    for (int64_t tt = tid; tt < T; tt += kThreads) {
      int sl[kMaxGatingTopK];
      float sc[kMaxGatingTopK];
      double sum = 0.0;
#pragma unroll
      for (int j = 0; j < kMaxGatingTopK; ++j) {
        if (j < k) {
          const int64_t r = tt * k + j;
          const int e = __ldcg(&expert[r]);
          const int rk = position_rank(r, tt, j, e);
          sl[j] = rk < C ? rk : -1;
          sc[j] = __ldcg(&out.route_score[r]);
          out.slot[r] = sl[j];
          if (write_rows) {
            if (sl[j] >= 0) {
              const int rw = s_lo[e] + sl[j];
              out.row[r] = rw;
              out.gather[rw] = static_cast<int>(r);
            } else {
              out.row[r] = -1;
            }
          }
          if (!p.renormalize_after_drop || sl[j] >= 0) sum += static_cast<double>(sc[j]);
        }
      }
      const float denom =
          p.renormalize ? static_cast<float>(fmax(sum, static_cast<double>(FLT_EPSILON))) : 1.0f;
#pragma unroll
      for (int j = 0; j < kMaxGatingTopK; ++j)
        if (j < k) out.gates[tt * k + j] = sl[j] >= 0 ? sc[j] / denom : 0.0f;
    }
  } else {
    if (write_rows) {
      for (int64_t r = tid; r < num_routes; r += kThreads) {
        const int sl = out.slot[r];
        if (sl >= 0) {
          const int rw = s_lo[__ldcg(&expert[r])] + sl;
          out.row[r] = rw;
          out.gather[rw] = static_cast<int>(r);
        } else {
          out.row[r] = -1;
        }
      }
    }
    for (int64_t tt = tid; tt < T; tt += kThreads) {
      double sum = 0.0;
      for (int j = 0; j < k; ++j) {
        const int64_t r = tt * k + j;
        if (!p.renormalize_after_drop || out.slot[r] >= 0)
          sum += static_cast<double>(__ldcg(&out.route_score[r]));
      }
      const float denom =
          p.renormalize ? static_cast<float>(fmax(sum, static_cast<double>(FLT_EPSILON))) : 1.0f;
      for (int j = 0; j < k; ++j) {
        const int64_t r = tt * k + j;
        out.gates[r] = out.slot[r] >= 0 ? __ldcg(&out.route_score[r]) / denom : 0.0f;
      }
    }
  }
  if (tid == 0) *ws.counter = 0;
}

// ---------------- a few tokens: one block, optionally the router too ----------------
// With at most kGatingFewTokens tokens and no route that can be dropped (dropless, or C >= T: a
// token picks an expert once), the plan fits one block: a warp per token routes it, a thread per
// route ranks it. Every sum repeats gating_kernel's order at T <= 32 (one phase-A block), so the
// outputs are the same bits (tests compare the two kernels). With the router fused (decoding: no
// jitter), a block per (token, expert) first forms that logit, and the last block to finish (the
// workspace counter, as in gating_kernel) does the gating.
constexpr int kFewThreads = 256;
constexpr int kFewWarps = kFewThreads / 32;
static_assert(kMaxGatingTopK * kGatingFewTokens <= kFewThreads, "one thread per route");
static_assert(kGatingFewTokens <= 32, "the z-loss tree and the first-choice ranks take one warp");

// Dynamic shared memory: s_wc [kFewWarps, E] int, s_load [E] int, s_lo [E + 1] int, s_aux [E]
// double.
size_t few_smem(int num_experts) {
  return sizeof(int) * (kFewWarps * num_experts + 2 * num_experts + 2) +
         sizeof(double) * num_experts + 16;
}

// z = x . w over d (d % 8 == 0, 16-byte aligned rows) by the whole block: warp v takes a
// contiguous slice of d, its lane l elements 8 l .. 8 l + 7 of every 256 within it, fp32 FMAs in
// element order, then a shuffle tree per warp and the warps' sums in warp order (a fixed order; a
// decode step's dot products are latency-bound, so every warp of the block loads at once). Thread 0
// gets the sum; every thread of the block must call it.
__device__ float block_dot_bf16_f32(const __nv_bfloat16* __restrict__ x,
                                    const float* __restrict__ w, int64_t d) {
  __shared__ float s_part[kFewWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t slice = (d + 8 * kFewWarps - 1) / (8 * kFewWarps) * 8;  // a multiple of 8
  const int64_t begin = warp * slice, end = min(d, begin + slice);
  float acc = 0.0f;
#pragma unroll 2
  for (int64_t i = begin + lane * 8; i < end; i += 256) {
    float xv[8];
    load_chunk<8>(x + i, xv);
    const float4 w0 = __ldg(reinterpret_cast<const float4*>(w + i));
    const float4 w1 = __ldg(reinterpret_cast<const float4*>(w + i + 4));
    const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
    for (int q = 0; q < 8; ++q) acc = fmaf(xv[q], wv[q], acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) s_part[warp] = acc;
  __syncthreads();
  float z = 0.0f;
  if (threadIdx.x == 0)
    for (int v = 0; v < kFewWarps; ++v) z += s_part[v];
  return z;
}

// logits [T, E]: read (x == nullptr, one block) or formed first from x [T, d] bf16 and w [E, d].
template <int VPT>
__global__ void __launch_bounds__(kFewThreads)
    gating_few_kernel(float* __restrict__ logits, const __nv_bfloat16* __restrict__ x,
                      const float* __restrict__ w, int64_t d, const float* __restrict__ bias,
                      GatingParams p, GatingOutputs out, int64_t max_rows, int* counter) {
  extern __shared__ __align__(16) unsigned char smem[];
  wait_for_previous_kernel();
  constexpr unsigned kFull = 0xffffffffu;
  const int E = p.num_experts, k = p.top_k;
  const int T = static_cast<int>(p.num_tokens), num_routes = T * k;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  if (x != nullptr) {
    // Block (t, e): one logit.
    const int e = static_cast<int>(blockIdx.x % E), t = static_cast<int>(blockIdx.x / E);
    const float z =
        block_dot_bf16_f32(x + static_cast<int64_t>(t) * d, w + static_cast<int64_t>(e) * d, d);
    if (tid == 0) logits[t * E + e] = z;
    if (gridDim.x > 1) {
      if (!finished_last(counter, static_cast<int>(gridDim.x))) return;
    } else {
      __syncthreads();
    }
  }

  __shared__ int s_sel[kGatingFewTokens * kMaxGatingTopK];
  __shared__ float s_norm[kGatingFewTokens];
  __shared__ double s_lse2[kGatingFewTokens];
  __shared__ int s_rows;
  int* s_wc = reinterpret_cast<int*>(smem);                                 // [kFewWarps, E]
  int* s_load = s_wc + kFewWarps * E;                                       // [E]
  int* s_lo = s_load + E;                                                   // [E + 1]
  double* s_aux = reinterpret_cast<double*>(s_lo + E + 2 + ((E + 2) & 1));  // [E]
  for (int i = tid; i < kFewWarps * E; i += kFewThreads) s_wc[i] = 0;
  for (int t = warp; t < T; t += kFewWarps)
    route_token<VPT>(logits + t * E, bias, p, out, t, s_sel + t * k, s_norm + t, s_lse2 + t);
  __syncthreads();

  // Route q in position order (choice-major: q = j T + t): its rank among the earlier routes to
  // its expert = the earlier lanes of its warp with that expert + the earlier warps' counts.
  const int q_t = tid % T, q_j = tid / T;
  const int q_e = tid < num_routes ? s_sel[q_t * k + q_j] : -1;
  const unsigned peers = __match_any_sync(kFull, q_e);
  if (q_e >= 0 && lane == __ffs(peers) - 1) s_wc[warp * E + q_e] = __popc(peers);
  __syncthreads();
  int rank = __popc(peers & ((1u << lane) - 1u));
  if (q_e >= 0)
    for (int v = 0; v < warp; ++v) rank += s_wc[v * E + q_e];

  // Per expert: loads and the aux-loss terms (p[t, e] summed in token order, as gating_kernel).
  const auto [first_only, factor] = aux_weights(p);
  for (int e = tid; e < E; e += kFewThreads) {
    int load = 0, first = 0;
    for (int v = 0; v < kFewWarps; ++v) load += s_wc[v * E + e];
    double psum = 0.0;
    for (int t = 0; t < T; ++t) {
      first += s_sel[t * k] == e;
      psum += static_cast<double>(out.scores[t * E + e]) / s_norm[t];
    }
    const double frac = static_cast<double>(first_only ? first : load) / T;
    s_load[e] = load;
    s_aux[e] = (psum / T) * frac;
    out.aux_grad[e] = static_cast<float>(factor * frac / T);
  }
  __syncthreads();
  if (warp == 0) {
    double z2 = lane < T ? s_lse2[lane] : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) z2 += __shfl_xor_sync(kFull, z2, off);
    if (lane == 0) {
      double aux;
      int mx;
      aux_total_and_max_load(s_aux, s_load, E, aux, mx);
      // Nothing is dropped here (load <= T <= C): counts = loads, info[2] = 0.
      const int C = p.dropless ? mx : static_cast<int>(p.capacity);
      s_rows = write_counts_and_offsets(s_load, E, C, mx, num_routes, p.padded, p.row_align, out,
                                        s_lo);
      out.losses[0] = p.aux_loss_type == AuxLossType::kNone ? 0.0 : aux * factor;
      out.losses[1] = z2 / T;
    }
  }
  __syncthreads();
  const bool write_rows = s_rows <= max_rows;
  if (write_rows) {
    for (int i = tid; i < s_rows; i += kFewThreads) out.gather[i] = -1;
    __syncthreads();
  }
  if (q_e >= 0) {
    const int r = q_t * k + q_j;
    out.slot[r] = rank;
    if (write_rows) {
      out.row[r] = s_lo[q_e] + rank;
      out.gather[s_lo[q_e] + rank] = r;
    }
  }
  if (tid < T) {
    double sum = 0.0;
    for (int j = 0; j < k; ++j) sum += static_cast<double>(out.route_score[tid * k + j]);
    const float denom =
        p.renormalize ? static_cast<float>(fmax(sum, static_cast<double>(FLT_EPSILON))) : 1.0f;
    for (int j = 0; j < k; ++j) out.gates[tid * k + j] = out.route_score[tid * k + j] / denom;
  }
  if (tid == 0 && gridDim.x > 1) *counter = 0;
}

template <int VPT>
void launch(const float* logits, const float* bias, const GatingParams& params,
            const GatingOutputs& out, int64_t max_rows, const Workspace& ws, cudaStream_t stream) {
  const int E = params.num_experts;
  static bool attr_set = false;
  if (!attr_set) {
    const size_t most =
        std::max(phase_a_smem(kMaxGatingExperts, kMaxGatingTopK), phase_b_smem(kMaxGatingExperts));
    CUDA_CHECK(cudaFuncSetAttribute(gating_kernel<VPT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(most + 1024)));
    attr_set = true;
  }
  const size_t smem = std::max(phase_a_smem(E, params.top_k), phase_b_smem(E));
  const unsigned blocks = static_cast<unsigned>(num_blocks(params.num_tokens));
  gating_kernel<VPT><<<blocks, kThreads, smem, stream>>>(logits, bias, params, out, max_rows, ws);
  MOEX_LAUNCH_CHECK();
}

// logits read (x == nullptr) or formed from x and w first (a block per token and expert).
template <int VPT>
void launch_few(float* logits, const void* x, const float* w, int64_t d, const float* bias,
                const GatingParams& params, const GatingOutputs& out, int64_t max_rows,
                int* counter, cudaStream_t stream) {
  const int E = params.num_experts;
  const unsigned blocks =
      x == nullptr ? 1u
                   : static_cast<unsigned>(E * params.num_tokens);
  launch_kernel(gating_few_kernel<VPT>, blocks, kFewThreads, few_smem(E), stream, logits,
                static_cast<const __nv_bfloat16*>(x), w, d, bias, params, out, max_rows, counter);
  MOEX_LAUNCH_CHECK();
}

// Picks VPT (experts per lane) for E.
template <class Fn>
void with_vpt(int num_experts, Fn&& fn) {
  if (num_experts <= 32) {
    fn(std::integral_constant<int, 1>{});
  } else if (num_experts <= 64) {
    fn(std::integral_constant<int, 2>{});
  } else if (num_experts <= 128) {
    fn(std::integral_constant<int, 4>{});
  } else if (num_experts <= 256) {
    fn(std::integral_constant<int, 8>{});
  } else {
    fn(std::integral_constant<int, 16>{});
  }
}

void check_params(const GatingParams& params) {
  const int E = params.num_experts;
  MOEX_CHECK(E > 0 && E <= kMaxGatingExperts, "moe_gating: num_experts must be in [1, ",
             kMaxGatingExperts, "], got ", E);
  MOEX_CHECK(params.top_k >= 1 && params.top_k <= std::min(kMaxGatingTopK, E), "moe_gating: top_k ",
             params.top_k, " out of range");
  MOEX_CHECK(params.num_tokens > 0, "moe_gating: num_tokens must be > 0, got ", params.num_tokens);
  MOEX_CHECK(params.num_tokens * params.top_k < (int64_t{1} << 31), "moe_gating: too many routes");
  MOEX_CHECK(params.dropless || params.padded, "moe_gating: the packed layout needs dropless");
  MOEX_CHECK(params.row_align >= 1, "moe_gating: row_align must be >= 1, got ", params.row_align);
  MOEX_CHECK(params.dropless || params.capacity >= 0, "moe_gating: capacity must be >= 0");
}

// One block serves the plan: few tokens and nothing to drop.
bool few_tokens(const GatingParams& p) {
  return p.one_block_ok && p.num_tokens <= kGatingFewTokens &&
         (p.dropless || p.capacity >= p.num_tokens);
}

}  // namespace

size_t gating_workspace_bytes(int64_t num_tokens, int num_experts, int top_k) {
  return workspace_bytes(num_tokens, num_experts, top_k);
}

int64_t gating_max_rows(const GatingParams& p) {
  if (!p.dropless) return p.num_experts * p.capacity;
  if (!p.padded) return p.num_tokens * p.top_k + int64_t{p.num_experts} * (p.row_align - 1);
  return p.num_experts * p.num_tokens;
}

void moe_gating(const float* logits, const float* bias, const GatingParams& params,
                const GatingOutputs& out, int64_t max_rows, void* workspace, cudaStream_t stream) {
  check_params(params);
  const Workspace ws = carve(workspace, params.num_tokens, params.num_experts, params.top_k);
  with_vpt(params.num_experts, [&](auto vpt) {
    if (few_tokens(params)) {
      launch_few<decltype(vpt)::value>(const_cast<float*>(logits), nullptr, nullptr, 0, bias,
                                       params, out, max_rows, ws.counter, stream);
    } else {
      launch<decltype(vpt)::value>(logits, bias, params, out, max_rows, ws, stream);
    }
  });
}

bool moe_router_gating_fits(const GatingParams& params, int64_t d, const void* x, const float* w) {
  return few_tokens(params) && d % 8 == 0 && aligned16(x) && aligned16(w);
}

void moe_router_gating(const void* x, const float* w, int64_t d, float* logits, const float* bias,
                       const GatingParams& params, const GatingOutputs& out, int64_t max_rows,
                       void* workspace, cudaStream_t stream) {
  check_params(params);
  MOEX_CHECK(moe_router_gating_fits(params, d, x, w), "moe_router_gating: T=", params.num_tokens,
             " d=", d, " needs T <= ", kGatingFewTokens,
             ", no droppable route, d % 8 == 0 and 16-byte aligned x and w");
  const Workspace ws = carve(workspace, params.num_tokens, params.num_experts, params.top_k);
  with_vpt(params.num_experts, [&](auto vpt) {
    launch_few<decltype(vpt)::value>(logits, x, w, d, bias, params, out, max_rows, ws.counter,
                                     stream);
  });
}

}  // namespace moex::cuda
