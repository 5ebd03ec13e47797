// Attention of serving rows over the paged KV pool, bf16 with fp32 softmax and accumulation
// (docs/gpu-model.md §Decoding). Every row is one token of some sequence and attends that
// sequence's positions 0..pos through its block table; rows of different sequences and lengths go
// in one launch. Twin: cpu/paged_attention.h (the same arguments, and the same table checks done
// on the host by the op layer).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace moex::cuda {

struct PagedAttentionParams {
  const void* q = nullptr;           // [R, H, Dh] bf16
  const void* k_pool = nullptr;      // [blocks, bs, KVH, Dh] bf16
  const void* v_pool = nullptr;      // [blocks, bs, KVH, Dh] bf16
  const int32_t* tables = nullptr;   // [S, max_blocks] (device)
  const int32_t* row_seq = nullptr;  // [R] (device)
  const int32_t* row_pos = nullptr;  // [R] (device)
  void* out = nullptr;               // [R, H, Dh] bf16
  int64_t rows = 0, heads = 0, kv_heads = 0, head_dim = 0, block_size = 0, max_blocks = 0;
  // Query heads of one KV head per block: 0 lets the launcher choose; tests force 1, 2, 4 or 8
  // (dividing heads / kv_heads) to run every variant.
  int heads_per_block = 0;
  // Blocks per (row, head group), each taking a contiguous share of the row's positions, the last
  // to finish merging their softmaxes (flash-decoding): 0 lets the launcher choose (several only
  // when few rows would leave SMs idle and the block tables reach far); tests force any >= 1.
  int position_splits = 0;
  // Prompt chunks on tensor cores (null: every row alone): tile t = tiles[4t..4t+3] = {first row,
  // rows (<= tile_rows), sequence, position of the first row} is a run of consecutive rows of one
  // sequence at consecutive positions, attended by the flash forward kernel (cuda/attention.h)
  // reading the pool through the block table; the rows outside every tile are rest_rows
  // [num_rest], attended one by one. Both lists on the device.
  const int32_t* tiles = nullptr;
  int64_t num_tiles = 0, tile_rows = 0;
  const int32_t* rest_rows = nullptr;
  int64_t num_rest = 0;
};

// Every row of p: the tiles (if any) on tensor cores, then the other rows one by one.
void paged_attention_bf16(const PagedAttentionParams& p, cudaStream_t stream);
// The tiles of p alone (cuda/attention.cu).
void paged_attention_tiles_bf16(const PagedAttentionParams& p, cudaStream_t stream);

// pool[slots[r]] = rows[r]: rows [R, width] bf16, pool [num_slots, width] bf16, slots on the
// device.
void scatter_rows_bf16(const void* rows, const int32_t* slots, int64_t num_rows, int64_t width,
                       void* pool, cudaStream_t stream);
// out[r] = src[index[r]]: src [*, width] bf16, out [R, width] bf16, index on the device.
void gather_rows_bf16(const void* src, const int32_t* index, int64_t num_rows, int64_t width,
                      void* out, cudaStream_t stream);

}  // namespace moex::cuda
