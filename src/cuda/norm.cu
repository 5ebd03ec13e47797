#include <algorithm>

#include "cuda/bf16_chunk.cuh"
#include "cuda/column_partials.h"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/norm.h"

namespace moex::cuda {
namespace {

using bf16 = __nv_bfloat16;

// A row is handled by a group of G threads (G <= 32: lanes of one warp, several rows per block;
// G > 32: the whole block, one row). Each thread keeps VPT chunks of W elements of the row in
// registers, so a row is read from memory once: thread t's chunk k starts at column (k*G + t)*W.
template <int G_, int VPT_, int W_>
struct Cfg {
  static constexpr int G = G_, VPT = VPT_, W = W_;
  static constexpr int kThreads = G_ > 32 ? G_ : 128;
  static constexpr int kRowsPerBlock = kThreads / G_;
};

// Picks the smallest group whose registers hold a whole row; vec = 16-byte chunks usable.
template <typename F>
void dispatch(int64_t dim, bool vec, const char* op, F&& f) {
  if (vec) {
    const int64_t nvec = dim / 8;
    if (nvec <= 4) return f(Cfg<4, 1, 8>{});
    if (nvec <= 8) return f(Cfg<8, 1, 8>{});
    if (nvec <= 16) return f(Cfg<16, 1, 8>{});
    if (nvec <= 32) return f(Cfg<32, 1, 8>{});
    if (nvec <= 128) return f(Cfg<32, 4, 8>{});
    if (nvec <= 256) return f(Cfg<64, 4, 8>{});
    if (nvec <= 512) return f(Cfg<128, 4, 8>{});
    if (nvec <= 1024) return f(Cfg<256, 4, 8>{});
    if (nvec <= 2048) return f(Cfg<512, 4, 8>{});
    if (nvec <= 4096) return f(Cfg<1024, 4, 8>{});
    if (nvec <= 8192) return f(Cfg<1024, 8, 8>{});
  } else {
    if (dim <= 256) return f(Cfg<32, 8, 1>{});
    if (dim <= 16384) return f(Cfg<1024, 16, 1>{});
  }
  MOEX_THROW(op, ": dim ", dim,
             " is too large (at most 65536 for multiples of 8 with 16-byte aligned buffers, "
             "16384 otherwise)");
}

// Sum over the G threads of a group; every thread of the block must call it (G > 32 uses smem).
template <int G>
__device__ __forceinline__ float group_sum(float v, float* smem) {
  if constexpr (G <= 32) {
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
  } else {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < G / 32; ++w) total += smem[w];
    __syncthreads();  // smem is reused by the next reduction
    return total;
  }
}

// Each group of G threads normalizes one row (no row loop): weight and bias are read only when the
// output is formed (from L1/L2, they are tiny and hot), so few registers stay live and many rows
// are in flight per SM.
template <typename C, bool kRms>
__global__ void __launch_bounds__(C::kThreads)
    norm_forward_kernel(const bf16* __restrict__ x, const bf16* __restrict__ res,
                        const bf16* __restrict__ w, const bf16* __restrict__ b, int64_t rows,
                        int dim, float eps, bf16* __restrict__ sum_out, bf16* __restrict__ y,
                        float* __restrict__ mean_out, float* __restrict__ rstd_out) {
  constexpr int G = C::G, VPT = C::VPT, W = C::W;
  __shared__ float smem[32];
  wait_for_previous_kernel();
  const int t = threadIdx.x % G, group = threadIdx.x / G;
  const float inv_dim = 1.0f / static_cast<float>(dim);
  // Groups past the last row still take part in every group_sum (shuffles and barriers).
  const int64_t row = blockIdx.x * int64_t{C::kRowsPerBlock} + group;
  const bool row_ok = row < rows;
  const bf16* xr = x + row * dim;
  RawChunk<W> xraw[VPT];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int col = (k * G + t) * W;
    xraw[k] = (row_ok && col < dim) ? load_raw<W>(xr + col) : zero_raw<W>();
    if (res != nullptr && row_ok && col < dim) {
      // The residual add first, rounded to bf16 as add_bf16 rounds it; the norm reads the sum.
      float v[W], r[W];
      unpack<W>(xraw[k], v);
      load_chunk<W>(res + row * dim + col, r);
#pragma unroll
      for (int i = 0; i < W; ++i) v[i] += r[i];
      xraw[k] = pack<W>(v);
      store_raw<W>(sum_out + row * dim + col, xraw[k]);
    }
  }
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    float v[W];
    unpack<W>(xraw[k], v);
#pragma unroll
    for (int i = 0; i < W; ++i) sum += v[i];
  }
  float mu = 0.0f;
  if constexpr (!kRms) mu = group_sum<G>(sum, smem) * inv_dim;
  // Centered squares in a second pass over registers: stable where E[x^2] - E[x]^2 is not.
  float sq = 0.0f;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    if ((k * G + t) * W < dim) {
      float v[W];
      unpack<W>(xraw[k], v);
#pragma unroll
      for (int i = 0; i < W; ++i) sq += (v[i] - mu) * (v[i] - mu);
    }
  }
  sq = group_sum<G>(sq, smem);
  const float rs = 1.0f / sqrtf(sq * inv_dim + eps);
  if (!row_ok) return;
  bf16* yr = y + row * dim;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int col = (k * G + t) * W;
    if (col >= dim) continue;
    float v[W], wv[W], bv[W];
    unpack<W>(xraw[k], v);
    load_chunk<W>(w + col, wv);
    if (b != nullptr) {
      load_chunk<W>(b + col, bv);
    } else {
#pragma unroll
      for (int i = 0; i < W; ++i) bv[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < W; ++i) v[i] = (v[i] - mu) * rs * wv[i] + bv[i];
    store_chunk<W>(yr + col, v);
  }
  if (t == 0) {
    if constexpr (!kRms) mean_out[row] = mu;
    rstd_out[row] = rs;
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w (RMSNorm: no mean(g), mu = 0).
// Column sums dw += dy * xhat, db += dy are kept per thread across the rows of the block: in the
// group's own slice of shared memory when G <= 128 (registers stay free for loads in flight), in
// registers for the larger groups. Each thread only ever touches its own columns, so no atomics;
// at the end the groups' sums are added in group order into the block's row of partials.
template <typename C>
constexpr bool smem_acc() {
  return C::G <= 128;
}

template <typename C>
size_t backward_smem_bytes(int64_t dim, bool bias) {
  return smem_acc<C>() ? C::kRowsPerBlock * (bias ? 2 : 1) * dim * sizeof(float) : 0;
}

template <int W>
__device__ __forceinline__ void add_chunk(float* p, const float (&v)[W]) {
  if constexpr (W == 8) {
    float4* p4 = reinterpret_cast<float4*>(p);
    float4 a = p4[0], b = p4[1];
    a.x += v[0], a.y += v[1], a.z += v[2], a.w += v[3];
    b.x += v[4], b.y += v[5], b.z += v[6], b.w += v[7];
    p4[0] = a;
    p4[1] = b;
  } else {
    p[0] += v[0];
  }
}

template <typename C, bool kRms>
__global__ void __launch_bounds__(C::kThreads)
    norm_backward_kernel(const bf16* dy, const bf16* __restrict__ x, const bf16* w,
                         const float* __restrict__ mean, const float* __restrict__ rstd,
                         int64_t rows, int dim, bf16* dx, float* __restrict__ partial_w,
                         float* __restrict__ partial_b) {
  constexpr int G = C::G, VPT = C::VPT, W = C::W;
  constexpr bool kSmemAcc = smem_acc<C>();
  __shared__ float smem[32];
  // [group][dim] dw sums, then [group][dim] db sums (with a bias)
  extern __shared__ __align__(16) float acc_smem[];
  const int t = threadIdx.x % G, group = threadIdx.x / G;
  const bool with_bias = partial_b != nullptr;
  const int64_t groups_dim = int64_t{C::kRowsPerBlock} * dim;
  float* sw = acc_smem + group * int64_t{dim};
  float* sb = sw + groups_dim;
  float accw[kSmemAcc ? 1 : VPT][W], accb[kSmemAcc ? 1 : VPT][W];
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const int col = (k * G + t) * W;
#pragma unroll
    for (int i = 0; i < W; ++i) {
      if constexpr (kSmemAcc) {
        if (col < dim) {
          sw[col + i] = 0.0f;
          if (with_bias) sb[col + i] = 0.0f;
        }
      } else {
        accw[k][i] = accb[k][i] = 0.0f;
      }
    }
  }
  const float inv_dim = 1.0f / static_cast<float>(dim);
  for (int64_t base = blockIdx.x * int64_t{C::kRowsPerBlock}; base < rows;
       base += int64_t{gridDim.x} * C::kRowsPerBlock) {
    const int64_t row = base + group;
    const bool row_ok = row < rows;
    const float mu = (kRms || !row_ok) ? 0.0f : mean[row];
    const float rs = row_ok ? rstd[row] : 0.0f;
    const bf16* xr = x + row * dim;
    const bf16* dyr = dy + row * dim;
    RawChunk<W> xraw[VPT], draw[VPT];
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int col = (k * G + t) * W;
      const bool ok = row_ok && col < dim;
      xraw[k] = ok ? load_raw<W>(xr + col) : zero_raw<W>();
      draw[k] = ok ? load_raw<W>(dyr + col) : zero_raw<W>();
    }
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int col = (k * G + t) * W;
      float xv[W], dv[W], wv[W], pw[W];
      unpack<W>(xraw[k], xv);
      unpack<W>(draw[k], dv);
      unpack<W>(col < dim ? load_raw<W>(w + col) : zero_raw<W>(), wv);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        const float g = dv[i] * wv[i];
        const float xc = xv[i] - mu;
        sum_g += g;
        sum_gx += g * xc * rs;
        pw[i] = dv[i] * xc * rs;
      }
      if constexpr (kSmemAcc) {
        if (col < dim) {
          add_chunk<W>(sw + col, pw);
          if (with_bias) add_chunk<W>(sb + col, dv);
        }
      } else {
#pragma unroll
        for (int i = 0; i < W; ++i) {
          accw[k][i] += pw[i];
          accb[k][i] += dv[i];
        }
      }
    }
    float mean_g = 0.0f;
    if constexpr (!kRms) mean_g = group_sum<G>(sum_g, smem) * inv_dim;
    const float mean_gx = group_sum<G>(sum_gx, smem) * inv_dim;
    if (!row_ok) continue;
    bf16* dxr = dx + row * dim;  // may alias dy: this thread already holds its dy chunks
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int col = (k * G + t) * W;
      if (col >= dim) continue;
      float xv[W], dv[W], wv[W];
      unpack<W>(xraw[k], xv);
      unpack<W>(draw[k], dv);
      unpack<W>(col < dim ? load_raw<W>(w + col) : zero_raw<W>(), wv);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        const float xhat = (xv[i] - mu) * rs;
        xv[i] = rs * (dv[i] * wv[i] - mean_g - xhat * mean_gx);
      }
      store_chunk<W>(dxr + col, xv);
    }
  }
  float* pw = partial_w + int64_t{blockIdx.x} * dim;
  float* pb = with_bias ? partial_b + int64_t{blockIdx.x} * dim : nullptr;
  if constexpr (kSmemAcc) {
    __syncthreads();
    for (int c = threadIdx.x; c < dim; c += C::kThreads) {
      float tw = 0.0f, tb = 0.0f;
      for (int gi = 0; gi < C::kRowsPerBlock; ++gi) {
        tw += acc_smem[gi * int64_t{dim} + c];
        if (with_bias) tb += acc_smem[groups_dim + gi * int64_t{dim} + c];
      }
      pw[c] = tw;
      if (with_bias) pb[c] = tb;
    }
  } else {
    // One group per block: its threads own disjoint columns.
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const int col = (k * G + t) * W;
      if (col >= dim) continue;
#pragma unroll
      for (int i = 0; i < W; ++i) {
        pw[col + i] = accw[k][i];
        if (with_bias) pb[col + i] = accb[k][i];
      }
    }
  }
}

// Backward blocks (= rows of partials): enough to fill the chip, few enough that reducing the
// partials costs a small fraction of the row pass. Fixed, so the summation order is too.
constexpr int64_t kMaxBackwardBlocks = 512;

int64_t backward_blocks(int64_t rows, int rows_per_block) {
  return std::min(ceil_div(rows, rows_per_block), kMaxBackwardBlocks);
}

void check_norm(const char* op, int64_t rows, int64_t dim) {
  MOEX_CHECK(rows >= 0, op, ": rows must be >= 0, got ", rows);
  MOEX_CHECK(dim > 0 && dim <= (int64_t{1} << 30), op, ": dim must be in [1, 2^30], got ", dim);
}

// res and sum null, or sum = x + res written and normalized (the fused residual add).
template <bool kRms>
void forward(const char* op, const void* x, const void* res, const void* w, const void* b,
             int64_t rows, int64_t dim, float eps, void* sum, void* y, float* mean, float* rstd,
             cudaStream_t stream) {
  check_norm(op, rows, dim);
  if (rows == 0) return;
  MOEX_CHECK((res == nullptr) == (sum == nullptr), op, ": give both the residual and the sum");
  const bool vec = dim % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(y) &&
                   (b == nullptr || aligned16(b)) && (res == nullptr || aligned16(res)) &&
                   (sum == nullptr || aligned16(sum));
  dispatch(dim, vec, op, [&](auto cfg) {
    using C = decltype(cfg);
    const int64_t blocks = ceil_div(rows, C::kRowsPerBlock);
    MOEX_CHECK(blocks < (int64_t{1} << 31), op, ": rows = ", rows, " is too large");
    launch_kernel(norm_forward_kernel<C, kRms>, static_cast<unsigned>(blocks), C::kThreads, 0,
                  stream, static_cast<const bf16*>(x), static_cast<const bf16*>(res),
                  static_cast<const bf16*>(w), static_cast<const bf16*>(b), rows,
                  static_cast<int>(dim), eps, static_cast<bf16*>(sum), static_cast<bf16*>(y), mean,
                  rstd);
    MOEX_LAUNCH_CHECK();
  });
}

template <bool kRms>
void backward(const char* op, const void* dy, const void* x, const void* w, const float* mean,
              const float* rstd, int64_t rows, int64_t dim, void* dx, float* dw, float* db,
              void* workspace, cudaStream_t stream) {
  check_norm(op, rows, dim);
  if (rows == 0) return;
  MOEX_CHECK(workspace != nullptr, op, ": workspace is null");
  const bool vec = dim % 8 == 0 && aligned16(dy) && aligned16(x) && aligned16(w) && aligned16(dx);
  dispatch(dim, vec, op, [&](auto cfg) {
    using C = decltype(cfg);
    const int64_t blocks = backward_blocks(rows, C::kRowsPerBlock);
    float* partial_w = static_cast<float*>(workspace);
    float* partial_b = db != nullptr ? partial_w + blocks * dim : nullptr;
    const size_t smem = backward_smem_bytes<C>(dim, db != nullptr);
    norm_backward_kernel<C, kRms><<<static_cast<unsigned>(blocks), C::kThreads, smem, stream>>>(
        static_cast<const bf16*>(dy), static_cast<const bf16*>(x), static_cast<const bf16*>(w),
        mean, rstd, rows, static_cast<int>(dim), static_cast<bf16*>(dx), partial_w, partial_b);
    MOEX_LAUNCH_CHECK();
    reduce_column_partials(partial_w, dw, partial_b, db, blocks, dim, stream);
  });
}

}  // namespace

size_t norm_backward_workspace_bytes(int64_t rows, int64_t dim) {
  // Every configuration uses at most min(rows, kMaxBackwardBlocks) blocks; room for dw and db.
  const int64_t blocks = std::max<int64_t>(std::min(rows, kMaxBackwardBlocks), 1);
  return static_cast<size_t>(2 * blocks * std::max<int64_t>(dim, 1)) * sizeof(float);
}

void layernorm_forward_bf16(const void* x, const void* w, const void* b, int64_t rows,
                            int64_t dim, float eps, void* y, float* mean, float* rstd,
                            cudaStream_t stream) {
  forward<false>("layernorm_forward_bf16", x, nullptr, w, b, rows, dim, eps, nullptr, y, mean, rstd,
                 stream);
}

void layernorm_backward_bf16(const void* dy, const void* x, const void* w, const float* mean,
                             const float* rstd, int64_t rows, int64_t dim, void* dx, float* dw,
                             float* db, void* workspace, cudaStream_t stream) {
  backward<false>("layernorm_backward_bf16", dy, x, w, mean, rstd, rows, dim, dx, dw, db,
                  workspace, stream);
}

void rmsnorm_forward_bf16(const void* x, const void* w, int64_t rows, int64_t dim, float eps,
                          void* y, float* rstd, cudaStream_t stream) {
  forward<true>("rmsnorm_forward_bf16", x, nullptr, w, nullptr, rows, dim, eps, nullptr, y, nullptr,
                rstd, stream);
}

void add_norm_forward_bf16(bool rms, const void* x, const void* res, const void* w, const void* b,
                           int64_t rows, int64_t dim, float eps, void* sum, void* y, float* mean,
                           float* rstd, cudaStream_t stream) {
  MOEX_CHECK(res != nullptr && sum != nullptr, "add_norm_forward_bf16: res and sum are needed");
  if (rms)
    forward<true>("add_rmsnorm_forward_bf16", x, res, w, nullptr, rows, dim, eps, sum, y, nullptr,
                  rstd, stream);
  else
    forward<false>("add_layernorm_forward_bf16", x, res, w, b, rows, dim, eps, sum, y, mean, rstd,
                   stream);
}

void rmsnorm_backward_bf16(const void* dy, const void* x, const void* w, const float* rstd,
                           int64_t rows, int64_t dim, void* dx, float* dw, void* workspace,
                           cudaStream_t stream) {
  backward<true>("rmsnorm_backward_bf16", dy, x, w, nullptr, rstd, rows, dim, dx, dw, nullptr,
                 workspace, stream);
}

}  // namespace moex::cuda
