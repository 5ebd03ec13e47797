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

void rope_forward_bf16(const void* x, void* y, const RopeParams& p, cudaStream_t stream);
void rope_backward_bf16(const void* dy, void* dx, const RopeParams& p, cudaStream_t stream);

}  // namespace moex::cuda
