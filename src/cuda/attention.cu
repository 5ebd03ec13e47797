// Launchers of the flash-style attention kernels (attention_fwd.cuh, attention_bwd.cuh).
//
// Head sizes are padded up to the kernel's compiled width (32, 64, 128 or 256) with zeros in
// shared memory; 64 and 128 run at their own width. Sizes that are not a multiple of 8 (or
// pointers not 16-byte aligned) load element by element instead of with cp.async.
//
// Determinism: forward, lse, Di, dk and dv give the same bits on every run (fixed reduction
// order; the query heads of a kv group are summed in one CTA in head order). dq is summed across
// key tiles with fp32 atomics in a workspace, so its last bits may vary from run to run.
#include <cmath>
#include <cstdint>

#include "core/arena.h"
#include "core/env.h"
#include "core/error.h"
#include "cuda/attention.h"
#include "cuda/attention_bwd.cuh"
#include "cuda/attention_fwd.cuh"
#include "cuda/bf16_util.cuh"
#include "cuda/cuda_check.h"
#include "cuda/cudnn_attention.h"
#include "cuda/paged_attention.h"

namespace moex::cuda {
namespace {

using attn::bf16;

constexpr float kLog2e = 1.4426950408889634f;

void check_params(const char* op, const AttentionParams& p) {
  MOEX_CHECK(p.batch >= 0 && p.q_len >= 0 && p.kv_len >= 0, op, ": negative size");
  MOEX_CHECK(p.num_heads > 0 && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0, op,
             ": num_kv_heads (", p.num_kv_heads, ") must divide num_heads (", p.num_heads, ")");
  MOEX_CHECK(p.head_dim > 0 && p.head_dim <= 256 && p.head_dim % 2 == 0, op,
             ": head_dim must be even and in [2, 256], got ", p.head_dim);
  MOEX_CHECK(p.start_pos >= 0 && p.start_pos + p.q_len <= p.kv_len, op,
             ": start_pos + q_len (", p.start_pos, " + ", p.q_len, ") must be <= kv_len (",
             p.kv_len, ")");
  MOEX_CHECK(p.scale >= 0.0f, op, ": scale must be >= 0, got ", p.scale);
  MOEX_CHECK(p.kv_len < (int64_t{1} << 31) && p.num_heads < 65536, op, ": sizes out of range");
}

bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Raises a kernel's dynamic shared-memory limit (callers keep one static flag per kernel).
template <typename Kernel>
bool allow_smem(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return true;
}

// ctas: batch (contiguous) or tiles (paged); a CTA per head of each, and per kBr query rows of a
// contiguous batch.
template <int kD, int kWarps, int kBc, int kMT, bool kQRegs, bool kPaged>
void launch_fwd(const attn::FwdArgs& a, int64_t ctas, cudaStream_t stream) {
  using Tile = attn::FwdTile<kD, kWarps, kBc, kMT>;
  MOEX_CHECK(!kPaged || a.tile_rows <= Tile::kBr, "paged attention: tiles of ", a.tile_rows,
             " rows, the kernel's hold ", Tile::kBr);
  auto kernel = attn::attention_fwd_kernel<kD, kWarps, kBc, kMT, kQRegs, kPaged>;
  constexpr int kSmem = kPaged ? Tile::kPagedSmemBytes : Tile::kSmemBytes;
  static const bool smem_ok = allow_smem(kernel, kSmem);
  (void)smem_ok;
  const dim3 grid(static_cast<unsigned>(ctas * a.num_heads),
                  kPaged ? 1u : static_cast<unsigned>(ceil_div(a.q_len, Tile::kBr)));
  kernel<<<grid, Tile::kThreads, kSmem, stream>>>(a);
  MOEX_LAUNCH_CHECK();
}

// The forward kernel for a's head size (padded up to 32, 64, 128 or 256).
template <bool kPaged>
void launch_fwd_for_head_dim(const attn::FwdArgs& a, int64_t ctas, cudaStream_t stream) {
  if (a.head_dim <= 32) {
    launch_fwd<32, 4, 64, 1, false, kPaged>(a, ctas, stream);
  } else if (a.head_dim <= 64) {
    launch_fwd<64, 4, 64, 1, true, kPaged>(a, ctas, stream);
  } else if (a.head_dim <= 128) {
    launch_fwd<128, 4, 64, 1, true, kPaged>(a, ctas, stream);
  } else {
    launch_fwd<256, 4, 32, 1, false, kPaged>(a, ctas, stream);
  }
}

template <int kD, int kWarps, int kBm>
void launch_bwd(const attn::BwdArgs& a, int64_t batch, cudaStream_t stream) {
  using Tile = attn::BwdTile<kD, kWarps, kBm>;
  auto kernel = attn::attention_bwd_kernel<kD, kWarps, kBm>;
  static const bool smem_ok = allow_smem(kernel, Tile::kSmemBytes);
  (void)smem_ok;
  const dim3 grid(static_cast<unsigned>(batch * a.num_kv_heads),
                  static_cast<unsigned>(ceil_div(a.seq, Tile::kBc)));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(a);
  MOEX_LAUNCH_CHECK();
}

}  // namespace

float attention_scale(const AttentionParams& p) {
  return p.scale > 0.0f ? p.scale : 1.0f / std::sqrt(static_cast<float>(p.head_dim));
}

bool attention_uses_cudnn(const AttentionParams& p) {
  if (p.engine == AttentionEngine::kOwn || p.start_pos != 0 || p.q_len != p.kv_len ||
      p.batch == 0 || p.q_len == 0)
    return false;
  if (p.engine == AttentionEngine::kCudnn) {
    MOEX_CHECK(cudnn_attention_supports(p), "attention: cuDNN's fused attention cannot run B=",
               p.batch, " T=", p.q_len, " H=", p.num_heads, "/", p.num_kv_heads,
               " head_dim=", p.head_dim, " (see the log for why)");
    return true;
  }
  static const bool enabled = env_on_unless_zero("MOEX_CUDNN_ATTENTION");
  return enabled && cudnn_attention_supports(p);
}

void attention_forward_bf16(const void* q, const void* k, const void* v, void* out, float* lse,
                            const AttentionParams& p, cudaStream_t stream) {
  check_params("attention_forward_bf16", p);
  if (p.batch == 0 || p.q_len == 0) return;
  if (attention_uses_cudnn(p)) return cudnn_attention_forward(q, k, v, out, lse, p, stream);
  attn::FwdArgs a;
  a.q = static_cast<const bf16*>(q);
  a.k = static_cast<const bf16*>(k);
  a.v = static_cast<const bf16*>(v);
  a.out = static_cast<bf16*>(out);
  a.lse = lse;
  a.q_len = static_cast<int>(p.q_len);
  a.kv_len = static_cast<int>(p.kv_len);
  a.num_heads = static_cast<int>(p.num_heads);
  a.num_kv_heads = static_cast<int>(p.num_kv_heads);
  a.head_dim = static_cast<int>(p.head_dim);
  a.start_pos = static_cast<int>(p.start_pos);
  a.scale_log2 = attention_scale(p) * kLog2e;
  a.vec = p.head_dim % 8 == 0 && aligned16(q) && aligned16(k) && aligned16(v);
  launch_fwd_for_head_dim<false>(a, p.batch, stream);
}

void paged_attention_tiles_bf16(const PagedAttentionParams& p, cudaStream_t stream) {
  if (p.num_tiles == 0) return;
  MOEX_CHECK(p.heads < 65536 && p.num_tiles * p.heads < (int64_t{1} << 31) &&
                 p.max_blocks * p.block_size < (int64_t{1} << 31),
             "paged_attention_tiles_bf16: sizes out of range");
  attn::FwdArgs a{};
  a.q = static_cast<const bf16*>(p.q);
  a.k = static_cast<const bf16*>(p.k_pool);
  a.v = static_cast<const bf16*>(p.v_pool);
  a.out = static_cast<bf16*>(p.out);
  a.lse = nullptr;
  a.num_heads = static_cast<int>(p.heads);
  a.num_kv_heads = static_cast<int>(p.kv_heads);
  a.head_dim = static_cast<int>(p.head_dim);
  a.scale_log2 = kLog2e / std::sqrt(static_cast<float>(p.head_dim));
  a.vec = p.head_dim % 8 == 0 && aligned16(p.q) && aligned16(p.k_pool) && aligned16(p.v_pool);
  a.tiles = p.tiles;
  a.tables = p.tables;
  a.block_size = static_cast<int>(p.block_size);
  a.max_blocks = static_cast<int>(p.max_blocks);
  a.tile_rows = static_cast<int>(p.tile_rows);
  launch_fwd_for_head_dim<true>(a, p.num_tiles, stream);
}

size_t attention_backward_workspace_bytes(const AttentionParams& p) {
  if (attention_uses_cudnn(p)) return cudnn_attention_backward_workspace_bytes(p);
  const size_t rows = static_cast<size_t>(p.batch * p.q_len * p.num_heads);
  // Di [B, H, T] fp32, then dq_acc [B, T, H, d] fp32
  return aligned_bytes(rows * sizeof(float)) +
         aligned_bytes(rows * static_cast<size_t>(p.head_dim) * sizeof(float));
}

void attention_backward_bf16(const void* dout, const void* q, const void* k, const void* v,
                             const void* out, const float* lse, void* dq, void* dk, void* dv,
                             void* workspace, const AttentionParams& p, cudaStream_t stream) {
  check_params("attention_backward_bf16", p);
  MOEX_CHECK(p.start_pos == 0 && p.q_len == p.kv_len,
             "attention_backward_bf16: needs start_pos == 0 and q_len == kv_len, got start_pos ",
             p.start_pos, ", q_len ", p.q_len, ", kv_len ", p.kv_len);
  if (p.batch == 0 || p.q_len == 0) return;
  if (attention_uses_cudnn(p))
    return cudnn_attention_backward(dout, q, k, v, out, lse, dq, dk, dv, workspace, p, stream);
  const int64_t rows = p.batch * p.q_len * p.num_heads;
  float* di = static_cast<float*>(workspace);
  float* dq_acc = reinterpret_cast<float*>(
      static_cast<char*>(workspace) + aligned_bytes(static_cast<size_t>(rows) * sizeof(float)));
  CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, static_cast<size_t>(rows * p.head_dim) * sizeof(float),
                             stream));
  attn::attention_bwd_dot_kernel<<<grid_for(rows * 32, 256), 256, 0, stream>>>(
      static_cast<const bf16*>(dout), static_cast<const bf16*>(out), di, rows,
      static_cast<int>(p.q_len), static_cast<int>(p.num_heads), static_cast<int>(p.head_dim));
  MOEX_LAUNCH_CHECK();

  attn::BwdArgs a;
  a.q = static_cast<const bf16*>(q);
  a.k = static_cast<const bf16*>(k);
  a.v = static_cast<const bf16*>(v);
  a.dout = static_cast<const bf16*>(dout);
  a.lse = lse;
  a.di = di;
  a.dq_acc = dq_acc;
  a.dk = static_cast<bf16*>(dk);
  a.dv = static_cast<bf16*>(dv);
  a.seq = static_cast<int>(p.q_len);
  a.num_heads = static_cast<int>(p.num_heads);
  a.num_kv_heads = static_cast<int>(p.num_kv_heads);
  a.head_dim = static_cast<int>(p.head_dim);
  a.scale = attention_scale(p);
  a.scale_log2 = a.scale * kLog2e;
  a.vec = p.head_dim % 8 == 0 && aligned16(q) && aligned16(k) && aligned16(v) &&
          aligned16(dout);
  if (p.head_dim <= 32) {
    launch_bwd<32, 4, 64>(a, p.batch, stream);
  } else if (p.head_dim <= 64) {
    launch_bwd<64, 4, 64>(a, p.batch, stream);
  } else if (p.head_dim <= 128) {
    launch_bwd<128, 8, 64>(a, p.batch, stream);
  } else {
    launch_bwd<256, 4, 16>(a, p.batch, stream);
  }

  const int64_t pairs = rows * p.head_dim / 2;
  attn::attention_bwd_dq_convert_kernel<<<grid_for(pairs, 256), 256, 0, stream>>>(
      dq_acc, static_cast<bf16*>(dq), pairs);
  MOEX_LAUNCH_CHECK();
}

}  // namespace moex::cuda
