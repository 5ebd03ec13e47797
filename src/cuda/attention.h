// Causal grouped-query attention on bf16 tensors, flash-style: scores are tiled through on-chip
// memory with an online softmax, so no [T, T] probability matrix is ever stored. Forward saves the
// per-row log-sum-exp (fp32) that backward uses to recompute the probabilities tile by tile.
//
// Layouts (row-major, contiguous):
//   q, out, dq, dout  [batch, q_len, num_heads, head_dim]
//   k, v, dk, dv      [batch, kv_len, num_kv_heads, head_dim]
//   lse               [batch, num_heads, q_len] fp32, natural log of sum_j exp(scale * q.k_j)
// Query head h reads key/value head h / (num_heads / num_kv_heads). Query i sits at position
// start_pos + i and attends to keys 0..start_pos+i (decoding: start_pos > 0, q_len < kv_len).
// Math in fp32 (fp32 accumulation of both products and of the softmax). Twin: cpu/attention.h.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moex::cuda {

// Which kernels run the training shape (start_pos 0, q_len == kv_len): kAuto takes cuDNN's fused
// attention where it supports the shape (cuda/cudnn_attention.h) unless MOEX_CUDNN_ATTENTION=0,
// else moex's own; kOwn and kCudnn force one (kCudnn throws where cuDNN cannot). Other shapes
// (decoding, prompt chunks after a prefix) always run moex's own kernels.
enum class AttentionEngine { kAuto, kOwn, kCudnn };

struct AttentionParams {
  int64_t batch = 0;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // divides num_heads
  int64_t head_dim = 0;      // any even size up to 256; 64 and 128 take the fast kernels
  int64_t start_pos = 0;     // start_pos + q_len <= kv_len
  float scale = 0.0f;        // 0 means 1 / sqrt(head_dim)
  AttentionEngine engine = AttentionEngine::kAuto;
};

// The softmax scale p asks for: p.scale, or 1 / sqrt(head_dim) when it is 0.
float attention_scale(const AttentionParams& p);
// True when attention_forward_bf16 / attention_backward_bf16 run p on cuDNN (see AttentionEngine).
bool attention_uses_cudnn(const AttentionParams& p);

void attention_forward_bf16(const void* q, const void* k, const void* v, void* out, float* lse,
                            const AttentionParams& p, cudaStream_t stream);

// Backward of the training case (start_pos == 0, q_len == kv_len). dq, dk, dv are written (not
// accumulated). workspace: attention_backward_workspace_bytes(p) bytes of device memory.
size_t attention_backward_workspace_bytes(const AttentionParams& p);
void attention_backward_bf16(const void* dout, const void* q, const void* k, const void* v,
                             const void* out, const float* lse, void* dq, void* dk, void* dv,
                             void* workspace, const AttentionParams& p, cudaStream_t stream);

}  // namespace moex::cuda
