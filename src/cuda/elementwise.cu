#include <algorithm>

#include "cuda/bf16_chunk.cuh"
#include "cuda/block_reduce.cuh"
#include "cuda/column_partials.h"
#include "cuda/cuda_check.h"
#include "cuda/elementwise.h"
#include "cuda/launch.cuh"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 256;

// Vector body (nv 16-byte vectors, when every pointer is 16-byte aligned) plus a scalar tail
// from element tail_start; unaligned buffers take the scalar loop for everything (nv = 0).
__global__ void add_bf16_kernel(const bf16* a, const bf16* b, bf16* y, int64_t n, int64_t nv) {
  wait_for_previous_kernel();
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (int64_t v = tid; v < nv; v += stride) {
    float x[8], z[8];
    load_bf16x8(a + v * 8, x);
    load_bf16x8(b + v * 8, z);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] += z[i];
    store_bf16x8(y + v * 8, x);
  }
  for (int64_t i = nv * 8 + tid; i < n; i += stride)
    y[i] = __float2bfloat16_rn(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

__global__ void add_f32_kernel(const float* x, float* y, int64_t n, int64_t nv) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (int64_t v = tid; v < nv; v += stride) {
    const float4 a = reinterpret_cast<const float4*>(x)[v];
    float4 b = reinterpret_cast<float4*>(y)[v];
    b.x += a.x;
    b.y += a.y;
    b.z += a.z;
    b.w += a.w;
    reinterpret_cast<float4*>(y)[v] = b;
  }
  for (int64_t i = nv * 4 + tid; i < n; i += stride) y[i] += x[i];
}

template <int W>
__global__ void add_bias_kernel(bf16* y, const bf16* bias, int64_t rows, int64_t cols) {
  const int64_t per_row = cols / W, chunks = rows * per_row;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < chunks;
       v += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = (v % per_row) * W;
    float yv[W], bv[W];
    load_chunk<W>(y + v * W, yv);
    load_chunk<W>(bias + c, bv);
#pragma unroll
    for (int i = 0; i < W; ++i) yv[i] += bv[i];
    store_chunk<W>(y + v * W, yv);
  }
}

// Column sums, stage 1: block (x, y) covers kColThreads * W columns of a chunk of kRowChunk rows.
// Thread (tx, ty) sums rows ty, ty + kRowThreads, ... of the chunk; the kRowThreads sums are then
// added in ty order and written as the chunk's row of partials (fixed order throughout).
constexpr int kColThreads = 32, kRowThreads = 8;
constexpr int64_t kRowChunk = 64;

template <int W>
__global__ void column_partials_kernel(const bf16* __restrict__ dy, int64_t rows, int64_t cols,
                                       float* __restrict__ partial) {
  __shared__ float sums[kRowThreads][kColThreads * W];
  const int64_t c0 = (blockIdx.x * int64_t{kColThreads} + threadIdx.x) * W;
  const int64_t r_begin = blockIdx.y * kRowChunk;
  const int64_t r_end = std::min(rows, r_begin + kRowChunk);
  float acc[W];
#pragma unroll
  for (int i = 0; i < W; ++i) acc[i] = 0.0f;
  if (c0 < cols) {
    for (int64_t r = r_begin + threadIdx.y; r < r_end; r += kRowThreads) {
      float v[W];
      load_chunk<W>(dy + r * cols + c0, v);
#pragma unroll
      for (int i = 0; i < W; ++i) acc[i] += v[i];
    }
  }
#pragma unroll
  for (int i = 0; i < W; ++i) sums[threadIdx.y][threadIdx.x * W + i] = acc[i];
  __syncthreads();
  // Columns of the tile, spread over all threads of the block for the final writes.
  for (int j = threadIdx.y * kColThreads + threadIdx.x; j < kColThreads * W;
       j += kColThreads * kRowThreads) {
    const int64_t c = blockIdx.x * int64_t{kColThreads} * W + j;
    if (c >= cols) continue;
    float total = 0.0f;
#pragma unroll
    for (int s = 0; s < kRowThreads; ++s) total += sums[s][j];
    partial[blockIdx.y * cols + c] = total;
  }
}

int64_t column_parts(int64_t rows) {
  return ceil_div(rows, kRowChunk);
}

template <typename T>
__global__ void fill_kernel(T* dst, T value, int64_t n, int64_t nv) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  uint32_t word = value;
  if constexpr (sizeof(T) == 2) word |= word << 16;
  const uint4 pattern = make_uint4(word, word, word, word);
  for (int64_t v = tid; v < nv; v += stride) reinterpret_cast<uint4*>(dst)[v] = pattern;
  constexpr int64_t kPerVec = 16 / sizeof(T);
  for (int64_t i = nv * kPerVec + tid; i < n; i += stride) dst[i] = value;
}

template <typename T>
void fill(const char* op, void* dst, T value, int64_t n, cudaStream_t stream) {
  MOEX_CHECK(n >= 0, op, ": n must be >= 0, got ", n);
  if (n == 0) return;
  const int64_t per_vec = 16 / sizeof(T);
  const int64_t nv = aligned16(dst) ? n / per_vec : 0;
  fill_kernel<T><<<grid_for(std::max(nv, n - nv * per_vec), kThreads), kThreads, 0, stream>>>(
      static_cast<T*>(dst), value, n, nv);
  MOEX_LAUNCH_CHECK();
}

// sum_f32, stage 1: block b sums elements [b * kSumChunk, (b + 1) * kSumChunk), each thread a
// fixed strided subset in order, then block_sum. Stage 2: one block sums the partials in order.
constexpr int kSumPerThread = 32;
constexpr int64_t kSumChunk = int64_t{kThreads} * kSumPerThread;
constexpr int kFinalThreads = 1024;

__global__ void sum_partials_kernel(const float* __restrict__ x, int64_t n, bool vec,
                                    float* __restrict__ partial) {
  const int64_t begin = blockIdx.x * kSumChunk;
  float acc = 0.0f;
  if (vec && begin + kSumChunk <= n) {
    const float4* x4 = reinterpret_cast<const float4*>(x + begin);
#pragma unroll
    for (int k = 0; k < kSumPerThread / 4; ++k) {
      const float4 v = x4[threadIdx.x + k * kThreads];
      acc += (v.x + v.y) + (v.z + v.w);
    }
  } else {
    for (int k = 0; k < kSumPerThread; ++k) {
      const int64_t i = begin + threadIdx.x + int64_t{k} * kThreads;
      if (i < n) acc += x[i];
    }
  }
  acc = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_final_kernel(const float* __restrict__ partial, int64_t parts,
                                 float* __restrict__ out) {
  float acc = 0.0f;
  for (int64_t p = threadIdx.x; p < parts; p += kFinalThreads) acc += partial[p];
  acc = block_sum<kFinalThreads>(acc);
  if (threadIdx.x == 0) out[0] = acc;
}

}  // namespace

void add_bf16(const void* a, const void* b, void* y, int64_t n, cudaStream_t stream) {
  MOEX_CHECK(n >= 0, "add_bf16: n must be >= 0, got ", n);
  if (n == 0) return;
  const int64_t nv = aligned16(a) && aligned16(b) && aligned16(y) ? n / 8 : 0;
  launch_kernel(add_bf16_kernel, grid_for(std::max(nv, n - nv * 8), kThreads), kThreads, 0, stream,
                static_cast<const bf16*>(a), static_cast<const bf16*>(b), static_cast<bf16*>(y), n,
                nv);
  MOEX_LAUNCH_CHECK();
}

void add_f32(const float* x, float* y, int64_t n, cudaStream_t stream) {
  MOEX_CHECK(n >= 0, "add_f32: n must be >= 0, got ", n);
  if (n == 0) return;
  const int64_t nv = aligned16(x) && aligned16(y) ? n / 4 : 0;
  add_f32_kernel<<<grid_for(std::max(nv, n - nv * 4), kThreads), kThreads, 0, stream>>>(x, y, n,
                                                                                         nv);
  MOEX_LAUNCH_CHECK();
}

void add_bias_bf16(void* y, const void* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  MOEX_CHECK(rows >= 0 && cols > 0, "add_bias_bf16: need rows >= 0 and cols > 0, got ", rows,
             ", ", cols);
  if (rows == 0) return;
  auto* ys = static_cast<bf16*>(y);
  const auto* bs = static_cast<const bf16*>(bias);
  if (cols % 8 == 0 && aligned16(y) && aligned16(bias)) {
    add_bias_kernel<8><<<grid_for(rows * cols / 8, kThreads), kThreads, 0, stream>>>(ys, bs, rows,
                                                                                     cols);
  } else {
    add_bias_kernel<1><<<grid_for(rows * cols, kThreads), kThreads, 0, stream>>>(ys, bs, rows,
                                                                                 cols);
  }
  MOEX_LAUNCH_CHECK();
}

size_t column_sum_workspace_bytes(int64_t rows, int64_t cols) {
  return static_cast<size_t>(std::max<int64_t>(column_parts(rows) * cols, 1)) * sizeof(float);
}

void column_sum_bf16(const void* dy, int64_t rows, int64_t cols, float* db, void* workspace,
                     cudaStream_t stream) {
  MOEX_CHECK(rows >= 0 && cols > 0, "column_sum_bf16: need rows >= 0 and cols > 0, got ", rows,
             ", ", cols);
  if (rows == 0) return;
  MOEX_CHECK(workspace != nullptr, "column_sum_bf16: workspace is null");
  const int64_t parts = column_parts(rows);
  MOEX_CHECK(parts < 65536, "column_sum_bf16: rows = ", rows, " is too large (at most ",
             65535 * kRowChunk, ")");
  auto* partial = static_cast<float*>(workspace);
  const auto* d = static_cast<const bf16*>(dy);
  const dim3 block(kColThreads, kRowThreads);
  if (cols % 8 == 0 && aligned16(dy)) {
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kColThreads * 8)),
                    static_cast<unsigned>(parts));
    column_partials_kernel<8><<<grid, block, 0, stream>>>(d, rows, cols, partial);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kColThreads)),
                    static_cast<unsigned>(parts));
    column_partials_kernel<1><<<grid, block, 0, stream>>>(d, rows, cols, partial);
  }
  MOEX_LAUNCH_CHECK();
  reduce_column_partials(partial, parts, cols, db, stream);
}

void fill_u32(void* dst, uint32_t value, int64_t n, cudaStream_t stream) {
  fill<uint32_t>("fill_u32", dst, value, n, stream);
}

void fill_u16(void* dst, uint16_t value, int64_t n, cudaStream_t stream) {
  fill<uint16_t>("fill_u16", dst, value, n, stream);
}

size_t sum_workspace_bytes(int64_t n) {
  return static_cast<size_t>(std::max<int64_t>(ceil_div(n, kSumChunk), 1)) * sizeof(float);
}

void sum_f32(const float* x, int64_t n, float* out, void* workspace, cudaStream_t stream) {
  MOEX_CHECK(n >= 0, "sum_f32: n must be >= 0, got ", n);
  if (n == 0) {
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float), stream));
    return;
  }
  MOEX_CHECK(workspace != nullptr, "sum_f32: workspace is null");
  const int64_t parts = ceil_div(n, kSumChunk);
  MOEX_CHECK(parts < (int64_t{1} << 31), "sum_f32: n = ", n, " is too large");
  auto* partial = static_cast<float*>(workspace);
  sum_partials_kernel<<<static_cast<unsigned>(parts), kThreads, 0, stream>>>(x, n, aligned16(x),
                                                                             partial);
  MOEX_LAUNCH_CHECK();
  sum_final_kernel<<<1, kFinalThreads, 0, stream>>>(partial, parts, out);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
