// Serving attention over the paged KV pool (docs/gpu-model.md §Decoding): the writes of a step's
// new keys and values into their pool slots, RoPE at a position per row, and the attention of
// rows of many sequences at once. Index tensors are i32; on the CPU they are checked by the op,
// on a GPU they must already sit on the device, checked on the host by check_paged_rows first
// (one upload per step, not one per op).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moex::ops {

// Throws unless every row's positions 0..row_pos[r] map through tables[row_seq[r]] to blocks in
// [0, num_blocks). Host tensors: tables [S, max_blocks], row_seq [R], row_pos [R].
void check_paged_rows(const Tensor& tables, const Tensor& row_seq, const Tensor& row_pos,
                      int64_t block_size, int64_t num_blocks);

// Prompt chunks on a GPU's tensor cores: a run of at least kPagedTileMinRows consecutive rows of
// one sequence at consecutive positions is cut into tiles of at most kPagedTileRows rows, each
// attended by the flash kernel; every other row (decode rows, short chunks) is attended alone.
constexpr int64_t kPagedTileRows = 64;
constexpr int64_t kPagedTileMinRows = 8;
constexpr int64_t kPagedTileWords = 4;
struct PagedTilePlan {
  // [T, kPagedTileWords]: first row, rows, sequence, position of the first row; the tiles with the
  // most keys first (they take longest).
  std::vector<int32_t> tiles;
  std::vector<int32_t> rest;  // the rows outside every tile, in order
};
// Host arrays row_seq [R], row_pos [R]. No tiles (and no rest) when no run is long enough, or
// with MOEX_PAGED_TILES=0 in the environment (for measurements).
PagedTilePlan plan_paged_tiles(const int32_t* row_seq, const int32_t* row_pos, int64_t rows);

// Throws unless the plan's tiles and rest rows (host tensors, as paged_attention takes them) cover
// every one of the R rows exactly once, each tile being at most kPagedTileRows consecutive rows of
// its sequence at consecutive positions from its first. Host row_seq [R], row_pos [R].
void check_paged_tiles(const Tensor& tiles, const Tensor& rest_rows, const Tensor& row_seq,
                       const Tensor& row_pos);

// out[r, h] = causal attention of q[r, h] over positions 0..row_pos[r] of sequence row_seq[r]:
// q [R, H, Dh], k_pool / v_pool [blocks, bs, KVH, Dh], out [R, H, Dh] in the compute dtype.
// tiles [T, kPagedTileWords] and rest_rows [R - tiled rows] (plan_paged_tiles, on the op's
// device, or both undefined) only choose the GPU's kernels; the result is the same function.
void paged_attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                     const Tensor& tables, const Tensor& row_seq, const Tensor& row_pos,
                     const Tensor& out, const Tensor& tiles = Tensor(),
                     const Tensor& rest_rows = Tensor());

// pool (viewed [slots, width]) row slots[r] = rows[r]: rows [R, width], slots [R] i32.
void scatter_rows(const Tensor& rows, const Tensor& slots, const Tensor& pool);
// A step's fused QKV projection rows into the attention inputs, in one pass: qkv [R, Q + 2K] holds
// each row's q heads, k heads and v heads (width head_dim each); q ([R, Q] elements) gets the q
// part rotated by RoPE at row_pos[r], the pools (viewed [slots, K]) row slots[r] get the rotated k
// part and the v part. theta <= 0: no rotation (learned positions). What copy_columns, rope and
// scatter_rows give, bit for bit.
void write_paged_qkv(const Tensor& qkv, int64_t head_dim, const Tensor& row_pos, double theta,
                     const Tensor& slots, const Tensor& q, const Tensor& k_pool,
                     const Tensor& v_pool);
// out[r] = src[index[r]]: src [N, width], out [R, width], index [R] i32 (e.g. each sequence's
// last row).
void gather_rows(const Tensor& src, const Tensor& index, const Tensor& out);

}  // namespace moex::ops
