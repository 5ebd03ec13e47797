// Attention of serving rows over the paged KV pool (docs/gpu-model.md §Decoding): every row is one
// token of some sequence and attends that sequence's positions 0..pos (causal), read through the
// sequence's block table. Rows of different sequences and lengths go in one call. Twin:
// cuda/paged_attention.h.
#pragma once

#include <cstdint>

namespace moex::cpu {

struct PagedAttentionShape {
  int64_t rows = 0;        // R query rows
  int64_t heads = 0;       // H query heads
  int64_t kv_heads = 0;    // KVH (H % KVH == 0: GQA)
  int64_t head_dim = 0;    // Dh
  int64_t block_size = 0;  // positions per KV block
  int64_t max_blocks = 0;  // columns of the block table
  int64_t num_blocks = 0;  // blocks in the pool (table entries are checked against it)
};

// out[r, h] = softmax_p(q[r, h] . k[p] / sqrt(Dh)) v[p] over positions p = 0..row_pos[r] of
// sequence row_seq[r], whose position p sits in pool slot tables[seq][p / bs] * bs + p % bs. The
// tables must map every such position into the pool (ops::check_paged_rows checks it).
void paged_attention(const float* q,          // [R, H, Dh]
                     const float* k_pool,     // [blocks, bs, KVH, Dh]
                     const float* v_pool,     // [blocks, bs, KVH, Dh]
                     const int32_t* tables,   // [S, max_blocks]
                     const int32_t* row_seq,  // [R]
                     const int32_t* row_pos,  // [R]
                     const PagedAttentionShape& shape,
                     float* out);  // [R, H, Dh]

// pool[slots[r]] = rows[r] for r < R: rows [R, width], pool [num_slots, width].
void scatter_rows(const float* rows, const int32_t* slots, int64_t num_rows, int64_t width,
                  int64_t num_slots, float* pool);
// out[r] = src[index[r]] for r < R: src [num_src, width], out [R, width].
void gather_rows(const float* src, const int32_t* index, int64_t num_rows, int64_t width,
                 int64_t num_src, float* out);

}  // namespace moex::cpu
