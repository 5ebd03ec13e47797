#include <algorithm>
#include <type_traits>

#include "core/error.h"
#include "cuda/bf16_chunk.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/few_rows_linear.h"
#include "cuda/few_rows_mma.cuh"
#include "cuda/last_block.cuh"
#include "cuda/launch.cuh"
#include "cuda/split_workspace.h"

namespace moex::cuda {
namespace {

// The shortest piece of k a split takes: below it a block spends more on its start and the
// hand-off than on loads.
constexpr int64_t kMinSplitLength = 256;

// How a call is cut: units of 32 weight rows (cuda/few_rows_mma.cuh), each split `splits` ways
// along k so that a small matrix still has a block in every resident slot (a 4096 x 4096 one has
// 128 units for ~400 slots: one block per SM cannot keep enough loads in flight).
struct Plan {
  int64_t units = 0, split_length = 0, blocks = 0;
  int splits = 1;
  bool preload = true;  // weight_preload_enabled()
};

// y[r, j] from its fp32 sum: a bf16 y is rounded, then the bias added (as gemm + add_bias).
__device__ __forceinline__ void store_output(void* y, const void* bias, bool y_f32, int64_t n,
                                             int r, int64_t j, float v) {
  if (y_f32) {
    static_cast<float*>(y)[r * n + j] = v;
    return;
  }
  if (bias != nullptr)
    v = __bfloat162float(__float2bfloat16(v)) +
        __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[j]);
  static_cast<__nv_bfloat16*>(y)[r * n + j] = __float2bfloat16(v);
}

// Each block walks (unit, split) items. One split: the block's sums are the outputs. Several:
// each block writes its split's partial sums, and the last of a unit's splits to finish adds them
// in split order, so the result does not depend on which block came last, nor on `rows`.
template <int kNT>
__global__ void __launch_bounds__(kFewRowsThreads, 3)
    few_rows_linear_kernel(FewRowsLinearParams p, Plan plan, SplitWorkspace ws) {
  __shared__ FewRowsSmem<kNT> smem;
  // With one n-tile the first weight loads go out before the wait for the kernel ahead
  // (few_rows_unit's BeforeX; with two the split first batch was slower in the expert kernels).
  // Waiting again costs nothing, so every unit passes it.
  constexpr bool kEarly = kNT == 1;
  using BeforeX = std::conditional_t<kEarly, WaitForPreviousKernel, NothingBeforeX>;
  if (!kEarly || !plan.preload) wait_for_previous_kernel();
  const auto* x = static_cast<const __nv_bfloat16*>(p.x);
  const auto* w = static_cast<const __nv_bfloat16*>(p.w);
  const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int64_t K = p.k, N = p.n;
  const int rows = static_cast<int>(p.rows), splits = plan.splits;
  // 32-bit loop state (few registers live across the unit: its loads need nearly all of them).
  const int items = static_cast<int>(plan.units) * splits,
            split_length = static_cast<int>(plan.split_length);
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int unit = item / splits, split = item % splits;
    const int k0 = split * split_length, length = min(split_length, static_cast<int>(K) - k0);
    // Rows past N are clamped to the last one; their outputs are dropped.
    auto weight_row = [&](int m, int h) {
      return w + min(int64_t{unit} * 32 + 16 * m + g + 8 * h, N - 1) * K + k0;
    };
    const __nv_bfloat16* const wr[4] = {weight_row(0, 0), weight_row(0, 1), weight_row(1, 0),
                                        weight_row(1, 1)};
    for (int r0 = 0; r0 < rows; r0 += 8 * kNT) {
      const int tiles = min(kNT, (rows - r0 + 7) / 8);
      const __nv_bfloat16* xr[kNT];
#pragma unroll
      for (int t = 0; t < kNT; ++t) xr[t] = x + int64_t{min(r0 + 8 * t + g, rows - 1)} * K + k0;
      few_rows_unit<kNT, BeforeX>(wr, xr, length, tiles, smem, [&](int t, const float(&h)[2][4]) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = r0 + 8 * t + 2 * q + (i & 1);
          if (r >= rows) continue;
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            const int64_t j = int64_t{unit} * 32 + 16 * m + g + (i >= 2 ? 8 : 0);
            if (j >= N) continue;
            if (splits == 1) {
              store_output(p.y, p.bias, p.y_f32, N, r, j, h[m][i]);
            } else {
              ws.partial[(int64_t{split} * rows + r) * N + j] = h[m][i];
            }
          }
        }
      });
    }
    if (splits > 1 && finished_last(ws.counters + unit, splits)) {
      for (int idx = threadIdx.x; idx < rows * 32; idx += blockDim.x) {
        const int r = idx / 32;
        const int64_t j = int64_t{unit} * 32 + idx % 32;
        if (j >= N) continue;
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) sum += ws.partial[(int64_t{s} * rows + r) * N + j];
        store_output(p.y, p.bias, p.y_f32, N, r, j, sum);
      }
      if (threadIdx.x == 0) ws.counters[unit] = 0;
    }
  }
}

// Blocks of the kernel that fit on the device at once.
template <int kNT>
int64_t resident_blocks() {
  static const int64_t resident = [] {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, few_rows_linear_kernel<kNT>,
                                                             kFewRowsThreads, 0));
    return int64_t{std::max(1, per_sm)} * current_device_sms();
  }();
  return resident;
}

// fp32 partial sums [splits, rows, n] of split calls and one arrival counter per unit. A split
// call has units * splits <= resident blocks, so resident * 32 * the most rows bounds the
// partials, sized for the kernel variant with the most resident blocks: made on the first call,
// never grown after.
SplitWorkspace split_workspace(cudaStream_t stream) {
  static SplitWorkspaces workspaces("few_rows_linear");
  const int64_t resident = std::max(resident_blocks<1>(), resident_blocks<2>());
  return workspaces.get(resident * 32 * kFewRowsLinearMaxRows, resident, stream);
}

template <int kNT>
void launch(const FewRowsLinearParams& p, cudaStream_t stream) {
  const int64_t resident = resident_blocks<kNT>();
  Plan plan;
  plan.preload = weight_preload_enabled();
  plan.units = ceil_div(p.n, 32);
  plan.splits = static_cast<int>(
      std::max<int64_t>(1, std::min(resident / plan.units, p.k / kMinSplitLength)));
  // Split lengths are whole 32-element chunks (every split starts 16-byte aligned).
  plan.split_length = ceil_div(ceil_div(p.k, plan.splits), 32) * 32;
  plan.splits = static_cast<int>(ceil_div(p.k, plan.split_length));
  const int64_t items = plan.units * plan.splits;
  // Every block the same number of items, all resident at once (no half-empty last wave).
  plan.blocks = ceil_div(items, ceil_div(items, resident));
  const SplitWorkspace ws = plan.splits > 1 ? split_workspace(stream) : SplitWorkspace{};
  launch_kernel(few_rows_linear_kernel<kNT>, static_cast<unsigned>(plan.blocks), kFewRowsThreads, 0,
                stream, p, plan, ws);
}

}  // namespace

bool few_rows_linear_fits(const FewRowsLinearParams& p) {
  // 32-bit unit and k indices in the kernel.
  return p.k < (int64_t{1} << 30) && p.n < (int64_t{1} << 30) && p.rows >= 1 &&
         p.rows <= kFewRowsLinearMaxRows && p.n >= 1 && p.k >= 8 && p.k % 8 == 0 &&
         aligned16(p.x) && aligned16(p.w);
}

bool few_rows_linear_wins(const FewRowsLinearParams& p) {
  if (!few_rows_linear_fits(p)) return false;
  // One row only: at 8 rows cuBLAS read the same matrices 2-3 us faster.
  return p.rows == 1 && 2 * ceil_div(p.n, 32) <= resident_blocks<1>();
}

void few_rows_linear(const FewRowsLinearParams& p, cudaStream_t stream) {
  MOEX_CHECK(few_rows_linear_fits(p), "few_rows_linear: ", p.rows, " rows of ", p.k, " (1..",
             kFewRowsLinearMaxRows, " rows, k a multiple of 8, 16-byte aligned x and w)");
  MOEX_CHECK(p.bias == nullptr || !p.y_f32, "few_rows_linear: no bias with an fp32 y");
  if (p.rows <= 8) {
    launch<1>(p, stream);
  } else {
    launch<2>(p, stream);
  }
}

}  // namespace moex::cuda
