// Rotary position embeddings on bf16 [batch, seq_len, heads, head_dim], Hugging Face "rotate_half"
// convention (element i pairs with i + head_dim/2), angles (start_pos + t) * theta^(-2i/head_dim)
// in fp32. Backward rotates by the negative angle. y may alias x. Twin: cpu/rope.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

struct RopeParams {
  int64_t batch = 0, seq_len = 0, num_heads = 0, head_dim = 0;  // head_dim even
  int64_t start_pos = 0;
  double theta = 10000.0;
  // When set (device memory): token t of the batch-1 input sits at positions[t] instead of
  // start_pos + t (rows of different sequences, serving).
  const int32_t* positions = nullptr;  // [seq_len]
};

// A serving step's fused QKV rows into attention inputs: for each row r of qkv [R, Q + 2K]
// ([q heads | k heads | v heads]), q[r] = RoPE(q part, positions[r]), k_pool[slots[r]] =
// RoPE(k part, positions[r]) and v_pool[slots[r]] = v part; theta <= 0: no rotation. One launch
// for what copy_columns, rope and scatter_rows do in seven (docs/gpu-model.md §Decoding), with the
// same rotation bits.
struct RopeQkvPagedParams {
  const void* qkv = nullptr;           // [R, q_width + 2 * kv_width] bf16
  const int32_t* positions = nullptr;  // [R] (device)
  const int32_t* slots = nullptr;      // [R] pool rows (device)
  void* q = nullptr;                   // [R, q_width] bf16
  void* k_pool = nullptr;              // [slots, kv_width] bf16
  void* v_pool = nullptr;              // [slots, kv_width] bf16
  int64_t rows = 0, q_width = 0, kv_width = 0, head_dim = 0;
  double theta = 10000.0;
};
void rope_qkv_paged_bf16(const RopeQkvPagedParams& p, cudaStream_t stream);

// Training's fused QKV projection rows and the attention inputs, both ways: split writes q [R, Q],
// k [R, K] and v [R, K] from qkv [R, Q + 2K], q and k rotated to their positions; merge (the
// split's backward) writes qkv from q, k and v, q and k rotated back. Row r sits at position
// start_pos + r % seq_len; theta <= 0: no rotation. One launch for what three column copies and
// two RoPE passes did, with the same rotation bits (docs/gpu-model.md §Attention's QKV split).
struct RopeQkvTrainParams {
  void* qkv = nullptr;                            // [R, q_width + 2 * kv_width] bf16
  void *q = nullptr, *k = nullptr, *v = nullptr;  // [R, q_width], [R, kv_width] x 2, bf16
  int64_t rows = 0, seq_len = 1, start_pos = 0, q_width = 0, kv_width = 0, head_dim = 0;
  double theta = 10000.0;
};
void rope_qkv_split_bf16(const RopeQkvTrainParams& p, cudaStream_t stream);
void rope_qkv_merge_backward_bf16(const RopeQkvTrainParams& p, cudaStream_t stream);

void rope_forward_bf16(const void* x, void* y, const RopeParams& p, cudaStream_t stream);
void rope_backward_bf16(const void* dy, void* dx, const RopeParams& p, cudaStream_t stream);

}  // namespace moex::cuda
