#include "infer/kv_block_pool.h"

#include <climits>

#include "core/error.h"

namespace moex::infer {

KVBlockPool::KVBlockPool(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  MOEX_CHECK(num_blocks > 0 && num_blocks <= INT32_MAX, "KV block pool: num_blocks must be in [1, ",
             INT32_MAX, "], got ", num_blocks);
  MOEX_CHECK(block_size > 0, "KV block pool: block_size must be >= 1, got ", block_size);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

bool KVBlockPool::reserve(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t need = blocks_for(tokens) - static_cast<int64_t>(table.size());
  if (need <= 0) return true;
  if (need > free_blocks()) return false;
  for (int64_t i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KVBlockPool::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  table.clear();
}

}  // namespace moex::infer
