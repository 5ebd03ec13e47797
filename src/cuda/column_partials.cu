#include "cuda/bf16_util.cuh"
#include "cuda/column_partials.h"
#include "cuda/cuda_check.h"

namespace moex::cuda {
namespace {

constexpr int kCols = 32;    // columns per block (one warp wide: coalesced rows of partials)
constexpr int kSlices = 32;  // threads per column; slice s sums parts s, s + kSlices, ...
constexpr int kBatch = 8;    // loads issued before they are added (latency hiding)

// Each column is summed by kSlices threads over interleaved parts, then the slice sums are added
// in slice order: the order depends on parts only, so the bits never change between runs.
// blockIdx.y picks one of two independent (partial, out) pairs.
__global__ void reduce_column_partials_kernel(const float* __restrict__ partial_a,
                                              float* __restrict__ out_a,
                                              const float* __restrict__ partial_b,
                                              float* __restrict__ out_b, int64_t parts,
                                              int64_t cols) {
  __shared__ float slice_sum[kSlices][kCols + 1];
  const float* partial = blockIdx.y == 0 ? partial_a : partial_b;
  float* out = blockIdx.y == 0 ? out_a : out_b;
  const int64_t c = blockIdx.x * int64_t{kCols} + threadIdx.x;
  float acc = 0.0f;
  if (c < cols) {
    for (int64_t p0 = threadIdx.y; p0 < parts; p0 += kSlices * kBatch) {
      float v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int64_t p = p0 + int64_t{u} * kSlices;
        v[u] = p < parts ? partial[p * cols + c] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) acc += v[u];
    }
  }
  slice_sum[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
#pragma unroll
    for (int s = 0; s < kSlices; ++s) total += slice_sum[s][threadIdx.x];
    out[c] += total;
  }
}

}  // namespace

void reduce_column_partials(const float* partial_a, float* out_a, const float* partial_b,
                            float* out_b, int64_t parts, int64_t cols, cudaStream_t stream) {
  if (parts == 0 || cols == 0) return;
  const dim3 block(kCols, kSlices);
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kCols)), out_b != nullptr ? 2 : 1);
  reduce_column_partials_kernel<<<grid, block, 0, stream>>>(partial_a, out_a, partial_b, out_b,
                                                            parts, cols);
  MOEX_LAUNCH_CHECK();
}

void reduce_column_partials(const float* partial, int64_t parts, int64_t cols, float* out,
                            cudaStream_t stream) {
  reduce_column_partials(partial, out, nullptr, nullptr, parts, cols, stream);
}

}  // namespace moex::cuda
