// Hands out the blocks of a paged KV cache (model/paged_kv.h): a free list of block ids; each
// sequence's block table grows as it does and goes back whole when it ends.
#pragma once

#include <cstdint>
#include <vector>

namespace moex::infer {

class KVBlockPool {
 public:
  KVBlockPool(int64_t num_blocks, int64_t block_size);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Grows `table` to cover `tokens` positions. False, taking nothing, when too few are free.
  bool reserve(std::vector<int32_t>& table, int64_t tokens);
  // Returns every block of `table` and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int64_t num_blocks_, block_size_;
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first
};

}  // namespace moex::infer
