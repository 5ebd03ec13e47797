#include <cfloat>

#include "core/rng.h"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/moe_gating.h"
#include "moe/router.h"

namespace moex::cuda {
namespace {

// One launch, two phases. Phase A: every block scores and selects its tokens (one per thread) and
// writes per-block partial statistics. The last block to finish (a counter in the workspace,
// after a fence) runs phase B alone: the ordered scans that give slots, the drop policy, offsets,
// the dispatch table, the gates and the losses. Phase B is sequential over chunks of routes in
// the CPU's order, so the result is deterministic and equal to build_dispatch_plan's.
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
static_assert(kWarps == 32, "block_rank_by_expert scans one warp count per lane");

struct Workspace {
  int* counter;     // [1] blocks done; the last block resets it
  double* block_p;  // [blocks, E] sum over the block's tokens of p[t, e]
  int* block_cnt;   // [blocks, E] aux-loss choice counts
  double* block_z;  // [blocks] sum of lse^2
  int* rank;        // [T*k]
  int* list;        // [T*k] routes grouped by expert (probs / rts)
  float* list_key;  // [T*k]
  int* keep;        // [T*k]
};

size_t align_up(size_t x) {
  return (x + 255) / 256 * 256;
}

Workspace carve(void* base, int64_t num_tokens, int num_experts, int top_k) {
  const int64_t blocks = ceil_div(num_tokens, kThreads) > 0 ? ceil_div(num_tokens, kThreads) : 1;
  const int64_t routes = num_tokens * top_k;
  char* p = static_cast<char*>(base);
  Workspace w;
  w.counter = reinterpret_cast<int*>(p);
  p += 256;
  w.block_p = reinterpret_cast<double*>(p);
  p += align_up(sizeof(double) * blocks * num_experts);
  w.block_cnt = reinterpret_cast<int*>(p);
  p += align_up(sizeof(int) * blocks * num_experts);
  w.block_z = reinterpret_cast<double*>(p);
  p += align_up(sizeof(double) * blocks);
  w.rank = reinterpret_cast<int*>(p);
  p += align_up(sizeof(int) * routes);
  w.list = reinterpret_cast<int*>(p);
  p += align_up(sizeof(int) * routes);
  w.list_key = reinterpret_cast<float*>(p);
  p += align_up(sizeof(float) * routes);
  w.keep = reinterpret_cast<int*>(p);
  return w;
}

// Block-wide stable ranking: items i = 0..n-1 in order; item(i) gives its expert or -1 (skipped);
// out(i, rank) receives the number of earlier items with the same expert. s_base [E] holds running
// totals (in and out); s_wc [E * kWarps] is scratch (expert-major). All threads of the block must
// call it.
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

__global__ void __launch_bounds__(kThreads)
    gating_kernel(const float* __restrict__ logits, const float* __restrict__ bias, GatingParams p,
                  GatingOutputs out, int64_t max_rows, Workspace ws) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int E = p.num_experts, k = p.top_k;
  const int64_t T = p.num_tokens, num_routes = T * k;
  const int tid = threadIdx.x;
  const bool first_only = p.aux_loss_type == AuxLossType::kDeepSpeed && k <= 2;
  const double factor = (p.aux_loss_type == AuxLossType::kDeepSpeed && k > 2)
                            ? static_cast<double>(E) / k
                            : static_cast<double>(E);

  // ---------------- phase A: one token per thread ----------------
  double* s_part = reinterpret_cast<double*>(smem);             // [kThreads]
  float* s_norm = reinterpret_cast<float*>(s_part + kThreads);  // [kThreads]
  int* s_cnt = reinterpret_cast<int*>(s_norm + kThreads);       // [E]
  for (int e = tid; e < E; e += kThreads) s_cnt[e] = 0;
  __syncthreads();
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kThreads;
  const int64_t t = t0 + tid;
  double lse2 = 0.0;
  if (t < T) {
    const float* zt = logits + t * E;
    float* st = out.scores + t * E;
    float m = zt[0];
    for (int e = 1; e < E; ++e) m = fmaxf(m, zt[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) sum += expf(zt[e] - m);
    const float lse = m + logf(sum);
    lse2 = static_cast<double>(lse) * lse;
    double norm = 1.0;
    if (p.score_func == ScoreFunc::kSoftmax) {
      float acc = 0.0f;
      for (int e = 0; e < E; ++e) acc += (st[e] = expf(zt[e] - m));
      for (int e = 0; e < E; ++e) st[e] /= acc;
    } else {
      norm = 0.0;
      for (int e = 0; e < E; ++e) {
        st[e] = 1.0f / (1.0f + expf(-zt[e]));
        norm += st[e];
      }
    }
    s_norm[tid] = static_cast<float>(norm);
    // Top-k by key, best first, ties to the lower expert id (router_select).
    const uint64_t gumbel_stream = moe::moe_rng_offset(p.offset, moe::MoERngUse::kGumbel);
    int32_t* sel = out.expert + t * k;
    for (int j = 0; j < k; ++j) {
      const bool gumbel_key = p.rsample || (j == 1 && p.gumbel_second_expert);
      int best = -1;
      double best_key = 0.0;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken |= sel[i] == e;
        if (taken) continue;
        double key = gumbel_key ? static_cast<double>(zt[e]) +
                                      static_cast<double>(philox_gumbel(
                                          p.seed, gumbel_stream, static_cast<uint64_t>(t * E + e)))
                                : static_cast<double>(st[e]);
        if (bias != nullptr) key += static_cast<double>(bias[e]);
        if (best < 0 || key > best_key) {
          best = e;
          best_key = key;
        }
      }
      sel[j] = best;
      out.route_score[t * k + j] = st[best];
      if (!first_only || j == 0) atomicAdd(&s_cnt[best], 1);
    }
  } else {
    s_norm[tid] = 1.0f;
  }
  __syncthreads();
  // Per-block sums of p[t, e] in a fixed order: G threads per expert, then the G partials.
  {
    const int groups = kThreads / E;
    const int e = tid % E, g = tid / E;
    const int64_t block_tokens = min(static_cast<int64_t>(kThreads), T - t0);
    double acc = 0.0;
    if (g < groups) {
      for (int64_t tl = g; tl < block_tokens; tl += groups)
        acc += static_cast<double>(out.scores[(t0 + tl) * E + e]) / s_norm[tl];
    }
    s_part[tid] = acc;
    __syncthreads();
    if (tid < E) {
      double total = 0.0;
      for (int gg = 0; gg < groups; ++gg) total += s_part[gg * E + tid];
      ws.block_p[blockIdx.x * E + tid] = total;
      ws.block_cnt[blockIdx.x * E + tid] = s_cnt[tid];
    }
    __syncthreads();
    s_part[tid] = lse2;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
      if (tid < stride) s_part[tid] += s_part[tid + stride];
      __syncthreads();
    }
    if (tid == 0) ws.block_z[blockIdx.x] = s_part[0];
  }

  // ---------------- hand-off: the last block continues ----------------
  __threadfence();
  __shared__ int s_last;
  if (tid == 0) s_last = atomicAdd(ws.counter, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  // ---------------- phase B: the last block alone ----------------
  int* s_wc = reinterpret_cast<int*>(smem);                                 // [kWarps * E]
  int* s_base = s_wc + kWarps * E;                                          // [E]
  int* s_load = s_base + E;                                                 // [E]
  int* s_lo = s_load + E;                                                   // [E + 1]
  double* s_aux = reinterpret_cast<double*>(s_lo + E + 2 + ((E + 2) & 1));  // [E] (8-byte aligned)
  __shared__ int s_capacity, s_max_load, s_rows;
  const int blocks = gridDim.x;

  // Loss statistics, summed over blocks in block order.
  for (int e = tid; e < E; e += kThreads) {
    double psum = 0.0;
    int cnt = 0;
    for (int b = 0; b < blocks; ++b) {
      psum += __ldcg(&ws.block_p[b * E + e]);
      cnt += __ldcg(&ws.block_cnt[b * E + e]);
    }
    const double frac = static_cast<double>(cnt) / T;
    s_aux[e] = (psum / T) * frac;
    out.aux_grad[e] = static_cast<float>(factor * frac / T);
    s_base[e] = 0;
  }
  __syncthreads();
  if (tid == 0) {
    double aux = 0.0, z = 0.0;
    for (int e = 0; e < E; ++e) aux += s_aux[e];
    for (int b = 0; b < blocks; ++b) z += __ldcg(&ws.block_z[b]);
    out.losses[0] = p.aux_loss_type == AuxLossType::kNone ? 0.0 : aux * factor;
    out.losses[1] = z / T;
  }

  // Pass 1: position order (choice-major, then token order) gives each route its rank.
  const int32_t* expert = out.expert;
  block_rank_by_expert(
      num_routes, E,
      [&](int64_t i) {
        const int64_t j = i / T, tt = i - j * T;
        return __ldcg(&expert[tt * k + j]);
      },
      [&](int64_t i, int rank) {
        const int64_t j = i / T, tt = i - j * T;
        ws.rank[tt * k + j] = rank;
      },
      s_wc, s_base);
  for (int e = tid; e < E; e += kThreads) s_load[e] = s_base[e];
  __syncthreads();
  if (tid == 0) {
    int mx = 0;
    for (int e = 0; e < E; ++e) mx = max(mx, s_load[e]);
    s_max_load = mx;
    s_capacity = p.dropless ? mx : static_cast<int>(p.capacity);
  }
  __syncthreads();
  const int C = s_capacity;

  if (p.dropless || p.policy == DropPolicy::kPosition) {
    for (int64_t r = tid; r < num_routes; r += kThreads) {
      const int rk = ws.rank[r];
      out.slot[r] = rk < C ? rk : -1;
    }
  } else {
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
      const int pos = s_lo[expert[r]] + ws.rank[r];
      ws.list[pos] = static_cast<int>(r);
      ws.list_key[pos] = p.policy == DropPolicy::kProbs
                             ? out.route_score[r]
                             : philox_uniform(p.seed, rts_stream, static_cast<uint64_t>(r));
    }
    __syncthreads();
    for (int64_t i = tid; i < num_routes; i += kThreads) {
      const int r = ws.list[i];
      const int e = expert[r];
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
        num_routes, E, [&](int64_t r) { return __ldcg(&ws.keep[r]) ? expert[r] : -1; },
        [&](int64_t r, int rank) { out.slot[r] = rank; }, s_wc, s_base);
    for (int64_t r = tid; r < num_routes; r += kThreads)
      if (!ws.keep[r]) out.slot[r] = -1;
  }
  __syncthreads();

  // Counts, offsets, info.
  if (tid == 0) {
    int run = 0, kept = 0;
    for (int e = 0; e < E; ++e) {
      const int cnt = min(s_load[e], C);
      out.load[e] = s_load[e];
      out.counts[e] = cnt;
      s_lo[e] = run;
      out.offsets[e] = run;
      run += p.padded ? C : cnt;
      kept += cnt;
    }
    s_lo[E] = run;
    out.offsets[E] = run;
    s_rows = run;
    out.info[0] = C;
    out.info[1] = run;
    out.info[2] = static_cast<int>(num_routes - kept);
    out.info[3] = s_max_load;
  }
  __syncthreads();
  const int64_t rows = s_rows;
  if (rows <= max_rows) {
    for (int64_t x = tid; x < rows; x += kThreads) out.gather[x] = -1;
    __syncthreads();
    for (int64_t r = tid; r < num_routes; r += kThreads) {
      const int sl = out.slot[r];
      if (sl >= 0) {
        const int rw = s_lo[expert[r]] + sl;
        out.row[r] = rw;
        out.gather[rw] = static_cast<int>(r);
      } else {
        out.row[r] = -1;
      }
    }
  }
  // Gates (router_gates): renormalization sums in double over the selected (or kept) routes.
  for (int64_t tt = tid; tt < T; tt += kThreads) {
    double sum = 0.0;
    for (int j = 0; j < k; ++j) {
      const int64_t r = tt * k + j;
      if (!p.renormalize_after_drop || out.slot[r] >= 0)
        sum += static_cast<double>(out.route_score[r]);
    }
    const float denom =
        p.renormalize ? static_cast<float>(fmax(sum, static_cast<double>(FLT_EPSILON))) : 1.0f;
    for (int j = 0; j < k; ++j) {
      const int64_t r = tt * k + j;
      out.gates[r] = out.slot[r] >= 0 ? out.route_score[r] / denom : 0.0f;
    }
  }
  if (tid == 0) *ws.counter = 0;
}

size_t phase_b_smem(int num_experts) {
  return sizeof(int) * (kWarps * num_experts + 3 * num_experts + 4) +
         sizeof(double) * (num_experts + 1) + 16;
}

size_t phase_a_smem(int num_experts) {
  return sizeof(double) * kThreads + sizeof(float) * kThreads + sizeof(int) * num_experts;
}

}  // namespace

size_t gating_workspace_bytes(int64_t num_tokens, int num_experts, int top_k) {
  const int64_t blocks = std::max<int64_t>(1, ceil_div(num_tokens, kThreads));
  const int64_t routes = num_tokens * top_k;
  return 256 + align_up(sizeof(double) * blocks * num_experts) +
         align_up(sizeof(int) * blocks * num_experts) + align_up(sizeof(double) * blocks) +
         3 * align_up(sizeof(int) * routes) + align_up(sizeof(int) * routes);
}

int64_t gating_max_rows(const GatingParams& p) {
  if (!p.dropless) return p.num_experts * p.capacity;
  if (!p.padded) return p.num_tokens * p.top_k;
  return p.num_experts * p.num_tokens;
}

void moe_gating(const float* logits, const float* bias, const GatingParams& params,
                const GatingOutputs& out, int64_t max_rows, void* workspace, cudaStream_t stream) {
  const int E = params.num_experts;
  MOEX_CHECK(E > 0 && E <= kMaxGatingExperts, "moe_gating: num_experts must be in [1, ",
             kMaxGatingExperts, "], got ", E);
  MOEX_CHECK(params.top_k >= 1 && params.top_k <= std::min(kMaxGatingTopK, E), "moe_gating: top_k ",
             params.top_k, " out of range");
  MOEX_CHECK(params.num_tokens > 0, "moe_gating: num_tokens must be > 0, got ", params.num_tokens);
  MOEX_CHECK(params.num_tokens * params.top_k < (int64_t{1} << 31), "moe_gating: too many routes");
  MOEX_CHECK(params.dropless || params.padded, "moe_gating: the packed layout needs dropless");
  MOEX_CHECK(params.dropless || params.capacity >= 0, "moe_gating: capacity must be >= 0");
  const size_t smem = std::max(phase_a_smem(E), phase_b_smem(E));
  static bool attr_set = false;
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(gating_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(phase_b_smem(kMaxGatingExperts) + 1024)));
    attr_set = true;
  }
  const Workspace ws = carve(workspace, params.num_tokens, E, params.top_k);
  const unsigned blocks = static_cast<unsigned>(ceil_div(params.num_tokens, kThreads));
  gating_kernel<<<blocks, kThreads, smem, stream>>>(logits, bias, params, out, max_rows, ws);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
