#include <algorithm>
#include <type_traits>

#include "core/error.h"
#include "cuda/activation_math.cuh"
#include "cuda/bf16_chunk.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/few_rows_mma.cuh"
#include "cuda/launch.cuh"
#include "cuda/moe_decode.h"

namespace moex::cuda {
namespace {

// Blocks per SM the grid aims at (more than fit at once: the rest queue), each walking several
// units, so that the few experts of a one-token call still fill the chip.
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
  bool preload = false;  // the down kernel: weight_preload_enabled()
};

// Units of one expert: SwiGLU takes 16 gate rows with their 16 up rows, the others 32 rows.
template <int kKind>
__host__ __device__ inline int64_t units_of(int64_t positions) {
  return kKind == kUpSwiGLU ? (positions + 15) / 16 : (positions + 31) / 32;
}

// h is rounded to bf16 before the activation, as the GEMM path stores it.
__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// The block's slot: the blockIdx.y-th expert with routes (-1: fewer experts were selected than
// there are slots) and its routed rows, in[r] the input row and out[r] the buffer row of each.
// Warp 0 reads the counts and the rows 32 at a time and compacts them with ballots, so a block
// starts after a few load latencies, not one per expert and row.
struct SlotRows {
  int in[kMaxDecodeCapacity];
  int out[kMaxDecodeCapacity];
  int count, expert;
};

template <int kKind>
__device__ void load_slot_rows(const KernelArgs& p, SlotRows& rows) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const unsigned below = (1u << lane) - 1;
  int e = -1;
  for (int base = 0, seen = 0; base < p.num_experts && e < 0; base += 32) {
    const int i = base + lane;
    const bool has = i < p.num_experts && __ldcg(p.counts + i) > 0;
    const unsigned mask = __ballot_sync(0xffffffffu, has);
    const int want = static_cast<int>(blockIdx.y) - seen;
    const unsigned hit = __ballot_sync(0xffffffffu, has && __popc(mask & below) == want);
    if (hit) e = base + __ffs(hit) - 1;
    seen += __popc(mask);
  }
  int n = 0;
  if (e >= 0) {
    const int C = __ldcg(p.info);
    for (int base = 0; base < C && n < kMaxDecodeCapacity; base += 32) {
      const int s = base + lane, row = e * C + s;
      const int route = s < C ? __ldcg(p.gather + row) : -1;
      const unsigned mask = __ballot_sync(0xffffffffu, route >= 0);
      const int r = n + __popc(mask & below);
      if (route >= 0 && r < kMaxDecodeCapacity) {
        rows.in[r] = kKind == kDown ? row : route / p.top_k;
        rows.out[r] = row;
      }
      n += __popc(mask);
    }
  }
  if (lane == 0) {
    rows.expert = e;
    rows.count = min(n, kMaxDecodeCapacity);
  }
}

// Grid: x splits an expert's units, y is a slot: slot y serves the y-th expert with routes (in
// expert order), so only selected experts get blocks. There are min(E, T * k) slots, the most
// experts T tokens can select. A block computes units of 32 weight rows (cuda/few_rows_mma.cuh)
// against every routed row of its expert, 8 * kNT rows per pass over the weights. A unit is SwiGLU
// gate rows 16u.. with the matching up rows F + 16u.. (so one lane holds both halves of an output
// and a is formed in registers), otherwise rows 32u..32u+31.
// The 3 blocks per SM of the launch bounds let ptxas use up to 170 registers, enough to keep every
// weight load of a step in flight; left to itself it held the kernel to 72 and serialised them.
//
// The down kernel of one n-tile starts its weights before waiting for the up kernel: its experts
// and rows come from the gating kernel ahead of the up kernel, which has finished once the up
// kernel's blocks have passed their own wait (only then may this kernel launch); they are read
// through L2 (__ldcg), where that kernel's writes are. Its first batch of weight loads then
// streams while the up kernel's last blocks finish (few_rows_unit's BeforeX); a and out wait.
// With two n-tiles the split first batch cost the 16- and 32-token calls 12-16 % on the H200.
template <int kKind, int kNT>
__global__ void __launch_bounds__(kFewRowsThreads, 3) decode_expert_mma_kernel(KernelArgs p) {
  __shared__ SlotRows slot;
  __shared__ FewRowsSmem<kNT> smem;
  constexpr bool kEarly = kKind == kDown && kNT == 1;
  using BeforeX = std::conditional_t<kEarly, WaitForPreviousKernel, NothingBeforeX>;
  if (!kEarly || !p.preload) wait_for_previous_kernel();
  load_slot_rows<kKind>(p, slot);
  __syncthreads();
  const int e = slot.expert;
  if (e < 0) return;  // fewer experts selected than slots; the same for the whole block
  const int* src = slot.in;
  const int* dst = slot.out;
  const int n = slot.count, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t K = p.k_dim;
  const int64_t units = units_of<kKind>(p.positions);
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
      few_rows_unit<kNT, BeforeX>(wr, xr, K, tiles, smem, [&](int t, const float(&h)[2][4]) {
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
  const int64_t units = units_of<kKind>(a.positions);
  // As many blocks as keep the chip busy, each walking several units: a block's start (reading its
  // slot's rows) is paid once, not once per unit.
  static const int sms = current_device_sms();
  const int64_t blocks =
      std::max<int64_t>(1, std::min<int64_t>(units, ceil_div(int64_t{kBlocksPerSm} * sms, slots)));
  launch_kernel(decode_expert_mma_kernel<kKind, kNT>,
                dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(slots)), kFewRowsThreads,
                0, stream, a);
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

}  // namespace

void moe_decode_experts(const MoEDecodeParams& p, cudaStream_t stream) {
  MOEX_CHECK(p.d % 8 == 0 && p.f % 8 == 0, "moe_decode_experts: d (", p.d, ") and F (", p.f,
             ") must be multiples of 8");
  // 16-byte loads of weight and input rows.
  MOEX_CHECK(aligned16(p.x) && aligned16(p.w1) && aligned16(p.w2) && aligned16(p.a),
             "moe_decode_experts: x, w1, w2 and a must be 16-byte aligned");
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
  if (p.swiglu) {
    launch_mma<kUpSwiGLU>(up, p.num_tokens, stream);
  } else {
    launch_mma<kUpGelu>(up, p.num_tokens, stream);
  }
  KernelArgs down = up;
  down.in = static_cast<const __nv_bfloat16*>(p.a);
  down.w = static_cast<const __nv_bfloat16*>(p.w2);
  down.out = static_cast<__nv_bfloat16*>(p.out);
  down.k_dim = p.f;
  down.positions = p.d;
  down.w_rows = p.d;
  down.preload = weight_preload_enabled();
  launch_mma<kDown>(down, p.num_tokens, stream);
}

}  // namespace moex::cuda
