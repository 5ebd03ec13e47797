// Causal scaled-dot-product attention with grouped-query heads (GQA/MQA/MHA), per (batch, head)
// through BLAS. Query head h reads key/value head h / (num_heads / num_kv_heads).
//
// Decode with a KV cache: keys/values may be longer than the queries. Query i sits at position
// start_pos + i and attends to keys 0..start_pos+i; keys past the last query's position are ignored
// (so k/v may be a cache buffer of capacity kv_len that is only partly filled).
#pragma once

#include <cstddef>
#include <cstdint>

namespace moex::cpu {

struct AttentionShape {
  int64_t batch = 0;
  int64_t q_len = 0;         // queries per sequence
  int64_t kv_len = 0;        // keys/values per sequence (row stride of k/v along time)
  int64_t num_heads = 0;     // query heads
  int64_t num_kv_heads = 0;  // divides num_heads
  int64_t head_dim = 0;
  int64_t start_pos = 0;  // position of query 0; start_pos + q_len <= kv_len
  double scale = 0.0;     // 0 means 1 / sqrt(head_dim)
};

// Forward. probs is saved for backward (rows past the causal limit hold zeros).
template <typename T>
void attention_forward(const T* q,  // [batch, q_len, num_heads, head_dim]
                       const T* k,  // [batch, kv_len, num_kv_heads, head_dim]
                       const T* v,  // [batch, kv_len, num_kv_heads, head_dim]
                       const AttentionShape& shape,
                       T* out,     // [batch, q_len, num_heads, head_dim]
                       T* probs);  // [batch, num_heads, q_len, kv_len], saved for backward

// Scratch (in elements of T) for attention_backward: one [q_len, kv_len] slot per kv-head group
// that may run at once, sized by omp_get_max_threads() now. Less (but at least q_len * kv_len)
// is accepted and runs fewer groups at once.
size_t attention_backward_workspace_elems(const AttentionShape& shape);

// Backward. dq, dk and dv are written (not accumulated).
template <typename T>
void attention_backward(const T* dout,   // [batch, q_len, num_heads, head_dim]
                        const T* q,      // [batch, q_len, num_heads, head_dim]
                        const T* k,      // [batch, kv_len, num_kv_heads, head_dim]
                        const T* v,      // [batch, kv_len, num_kv_heads, head_dim]
                        const T* probs,  // [batch, num_heads, q_len, kv_len], from forward
                        const AttentionShape& shape,
                        T* dq,  // [batch, q_len, num_heads, head_dim]
                        T* dk,  // [batch, kv_len, num_kv_heads, head_dim]
                        T* dv,  // [batch, kv_len, num_kv_heads, head_dim]
                        T* workspace,
                        size_t workspace_elems);  // attention_backward_workspace_elems

}  // namespace moex::cpu
