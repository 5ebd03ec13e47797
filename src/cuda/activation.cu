#include "cuda/activation.h"
#include "cuda/activation_math.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/padded_rows.cuh"

namespace moex::cuda {
namespace {

// One thread per 8 consecutive elements of a row; grid-stride over rows * ffn / 8 vectors
// (per_row vectors a row), skipping rows no expert uses.
__global__ void gelu_forward_kernel(const __nv_bfloat16* h, __nv_bfloat16* a, int64_t vectors,
                                    int64_t per_row, bool exact, PaddedRows used) {
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    if (!padded_row_used(used, v / per_row)) continue;
    float x[8];
    load_bf16x8(h + v * 8, x);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = gelu(x[i], exact);
    store_bf16x8(a + v * 8, x);
  }
}

// a, when not null, gets the forward's activations again (the same expression, so the same
// bits); it may be da itself: each thread reads its da vector before writing a over it.
__global__ void gelu_backward_kernel(const __nv_bfloat16* h, const __nv_bfloat16* da,
                                     __nv_bfloat16* dh, __nv_bfloat16* a, int64_t vectors,
                                     int64_t per_row, bool exact, PaddedRows used) {
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    if (!padded_row_used(used, v / per_row)) continue;
    float x[8], g[8], y[8];
    load_bf16x8(h + v * 8, x);
    load_bf16x8(da + v * 8, g);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      y[i] = gelu(x[i], exact);
      x[i] = g[i] * gelu_grad(x[i], exact);
    }
    store_bf16x8(dh + v * 8, x);
    if (a != nullptr) store_bf16x8(a + v * 8, y);
  }
}

__global__ void swiglu_forward_kernel(const __nv_bfloat16* h, __nv_bfloat16* a, int64_t rows,
                                      int64_t ffn, PaddedRows used) {
  const int64_t per_row = ffn / 8, vectors = rows * per_row;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = v / per_row, col = (v - row * per_row) * 8;
    if (!padded_row_used(used, row)) continue;
    const __nv_bfloat16* hr = h + row * 2 * ffn;
    float g[8], u[8];
    load_bf16x8(hr + col, g);
    load_bf16x8(hr + ffn + col, u);
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = g[i] * sigmoid(g[i]) * u[i];
    store_bf16x8(a + row * ffn + col, g);
  }
}

__global__ void swiglu_backward_kernel(const __nv_bfloat16* h, const __nv_bfloat16* da,
                                       __nv_bfloat16* dh, __nv_bfloat16* a, int64_t rows,
                                       int64_t ffn, PaddedRows used) {
  const int64_t per_row = ffn / 8, vectors = rows * per_row;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = v / per_row, col = (v - row * per_row) * 8;
    if (!padded_row_used(used, row)) continue;
    const __nv_bfloat16* hr = h + row * 2 * ffn;
    float g[8], u[8], d[8], dg[8], du[8], y[8];
    load_bf16x8(hr + col, g);
    load_bf16x8(hr + ffn + col, u);
    load_bf16x8(da + row * ffn + col, d);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float sg = sigmoid(g[i]);
      const float silu = g[i] * sg;
      y[i] = silu * u[i];  // the forward's product, in its order
      du[i] = d[i] * silu;
      dg[i] = d[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
    store_bf16x8(dh + row * 2 * ffn + col, dg);
    store_bf16x8(dh + row * 2 * ffn + ffn + col, du);
    if (a != nullptr) store_bf16x8(a + row * ffn + col, y);
  }
}

__global__ void f32_to_bf16_kernel(const float* src, __nv_bfloat16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void bf16_to_f32_kernel(const __nv_bfloat16* src, float* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

void check_vec(const void* p, int64_t ffn, const char* what) {
  MOEX_CHECK(ffn % 8 == 0, what, ": ffn size ", ffn, " must be a multiple of 8");
  MOEX_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, what, ": pointer not 16-byte aligned");
}

constexpr int kThreads = 256;

}  // namespace

void gelu_forward_bf16(const void* h, void* a, int64_t rows, int64_t ffn, bool exact,
                       cudaStream_t stream, const PaddedRows& used) {
  check_vec(h, ffn, "gelu_forward_bf16");
  check_vec(a, ffn, "gelu_forward_bf16");
  const int64_t vectors = rows * ffn / 8;
  if (vectors == 0) return;
  gelu_forward_kernel<<<grid_for(vectors, kThreads), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<__nv_bfloat16*>(a), vectors, ffn / 8, exact,
      used);
  MOEX_LAUNCH_CHECK();
}

void gelu_backward_bf16(const void* h, const void* da, void* dh, void* a, int64_t rows, int64_t ffn,
                        bool exact, cudaStream_t stream, const PaddedRows& used) {
  check_vec(h, ffn, "gelu_backward_bf16");
  check_vec(da, ffn, "gelu_backward_bf16");
  check_vec(dh, ffn, "gelu_backward_bf16");
  if (a != nullptr) check_vec(a, ffn, "gelu_backward_bf16");
  const int64_t vectors = rows * ffn / 8;
  if (vectors == 0) return;
  gelu_backward_kernel<<<grid_for(vectors, kThreads), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<const __nv_bfloat16*>(da),
      static_cast<__nv_bfloat16*>(dh), static_cast<__nv_bfloat16*>(a), vectors, ffn / 8, exact,
      used);
  MOEX_LAUNCH_CHECK();
}

void swiglu_forward_bf16(const void* h, void* a, int64_t rows, int64_t ffn, cudaStream_t stream,
                         const PaddedRows& used) {
  check_vec(h, ffn, "swiglu_forward_bf16");
  check_vec(a, ffn, "swiglu_forward_bf16");
  const int64_t vectors = rows * ffn / 8;
  if (vectors == 0) return;
  swiglu_forward_kernel<<<grid_for(vectors, kThreads), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<__nv_bfloat16*>(a), rows, ffn, used);
  MOEX_LAUNCH_CHECK();
}

void swiglu_backward_bf16(const void* h, const void* da, void* dh, void* a, int64_t rows,
                          int64_t ffn, cudaStream_t stream, const PaddedRows& used) {
  check_vec(h, ffn, "swiglu_backward_bf16");
  check_vec(da, ffn, "swiglu_backward_bf16");
  check_vec(dh, ffn, "swiglu_backward_bf16");
  if (a != nullptr) check_vec(a, ffn, "swiglu_backward_bf16");
  const int64_t vectors = rows * ffn / 8;
  if (vectors == 0) return;
  swiglu_backward_kernel<<<grid_for(vectors, kThreads), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(h), static_cast<const __nv_bfloat16*>(da),
      static_cast<__nv_bfloat16*>(dh), static_cast<__nv_bfloat16*>(a), rows, ffn, used);
  MOEX_LAUNCH_CHECK();
}

void f32_to_bf16(const float* src, void* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  f32_to_bf16_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      src, static_cast<__nv_bfloat16*>(dst), n);
  MOEX_LAUNCH_CHECK();
}

void bf16_to_f32(const void* src, float* dst, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  bf16_to_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(src), dst, n);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
