// Rotary position embeddings, Hugging Face / Llama convention ("rotate_half"): within each head,
// element i is paired with element i + head_dim/2 and the pair is rotated by pos * inv_freq[i],
// inv_freq[i] = theta^(-2i / head_dim).
#pragma once

#include <cstdint>

namespace moex::cpu {

struct RopeShape {
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;   // even
  int64_t start_pos = 0;  // position of token 0 (> 0 when decoding after a KV cache)
  double theta = 10000.0;
  // When set: token t sits at positions[t] instead of start_pos + t (rows of different
  // sequences, serving); batch must be 1.
  const int32_t* positions = nullptr;  // [seq_len]
};

// y[b, t, h, :] = rotate(x[b, t, h, :], start_pos + t). y may alias x.
// Angles are formed in T the way transformers does (inv_freq, then pos * inv_freq, then cos/sin),
// so fp32 results follow HF's fp32 rounding.
template <typename T>
void rope_forward(const T* x,  // [batch, seq_len, num_heads, head_dim]
                  const RopeShape& shape,
                  T* y);  // [batch, seq_len, num_heads, head_dim]

// The rotation is orthogonal, so dx is dy rotated by the negative angle. dx may alias dy.
template <typename T>
void rope_backward(const T* dy,  // [batch, seq_len, num_heads, head_dim]
                   const RopeShape& shape,
                   T* dx);  // [batch, seq_len, num_heads, head_dim]

}  // namespace moex::cpu
