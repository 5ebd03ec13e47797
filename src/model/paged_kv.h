// Keys and values for serving: every layer's cache is one pool of fixed-size blocks, and each
// sequence owns a list of block ids (its block table), so sequences of any length share one
// pool sized at start-up and free their blocks when they end (infer/kv_block_pool.h hands them
// out).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moex::model {

// k[l], v[l]: [num_blocks, block_size, Hkv, Dh] in the model's compute dtype on its device.
// table_width > 0: block tables are padded to this many blocks (the longest sequence's), so every
// decode step of one batch size has the same shapes, and on a GPU such steps replay one captured
// CUDA graph per batch size (docs/gpu-model.md §Decoding). 0: tables as wide as the step needs,
// no graphs.
struct PagedKV {
  std::vector<Tensor> k, v;
  int64_t num_blocks = 0, block_size = 0;
  int64_t table_width = 0;
};

// One sequence's part of a batched forward: `len` new tokens at positions start_pos.., whose keys
// and values go to position p's slot in block blocks[p / block_size]. The table covers
// start_pos + len positions.
struct SequenceSlice {
  int64_t start_pos = 0;
  int64_t len = 0;
  const int32_t* blocks = nullptr;
  int64_t num_blocks = 0;
  // The logits of every new token of this slice instead of only its last (prompt
  // log-probabilities; Model::forward_paged).
  bool all_logits = false;
};

// One serving step's tokens and where each row lives, built once per step by Model::forward_paged
// and read by every layer, i32 tensors on the model's device (one upload per step). Row r of the
// step is token ids[r] at position row_pos[r] of sequence row_seq[r]; its key and value go to pool
// slot slots[r] (block * block_size + offset); tables [S, max_blocks] are the sequences' block
// tables, and logit_rows [L] the rows the logits are computed for: each sequence's last new token,
// or all its new tokens for a slice with all_logits (L = S when none has). sample_params [S,
// ops::kSampleParamWords] say how each sequence's next token is drawn (ops/sample.h). tiles and
// rest_rows: the prompt chunks the GPU attends a tile at a time, and the other rows
// (ops::plan_paged_tiles; undefined when the step has no chunk long enough).
struct PagedRows {
  Tensor ids, tables, row_seq, row_pos, slots, logit_rows, sample_params;
  Tensor tiles, rest_rows;
};

}  // namespace moex::model
