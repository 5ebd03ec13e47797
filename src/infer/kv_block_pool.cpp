#include "infer/kv_block_pool.h"

#include <algorithm>
#include <climits>

#include "core/error.h"

namespace moex::infer {

size_t KVBlockPool::KeyHash::operator()(const Key& k) const {
  uint64_t h = k.tokens_hash ^ (static_cast<uint64_t>(static_cast<uint32_t>(k.parent)) << 32);
  h ^= k.parent_generation + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return static_cast<size_t>(h);
}

KVBlockPool::KVBlockPool(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  MOEX_CHECK(num_blocks > 0 && num_blocks <= INT32_MAX, "KV block pool: num_blocks must be in [1, ",
             INT32_MAX, "], got ", num_blocks);
  MOEX_CHECK(block_size > 0, "KV block pool: block_size must be >= 1, got ", block_size);
  blocks_.resize(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

KVBlockPool::Key KVBlockPool::key_of(const std::vector<int32_t>& tokens, int64_t block_index,
                                     int32_t parent) const {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the block's tokens
  for (int64_t i = block_index * block_size_; i < (block_index + 1) * block_size_; ++i) {
    h ^= static_cast<uint32_t>(tokens[static_cast<size_t>(i)]);
    h *= 0x100000001b3ull;
  }
  Key k;
  k.parent = parent;
  k.parent_generation = parent < 0 ? 0 : blocks_[static_cast<size_t>(parent)].generation;
  k.tokens_hash = h;
  return k;
}

void KVBlockPool::unregister(int32_t b) {
  Block& block = blocks_[static_cast<size_t>(b)];
  index_.erase(block.key);
  block.registered = false;
  block.tokens.clear();
}

int32_t KVBlockPool::take_block() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    b = evictable_.front();
    evictable_.pop_front();
    unregister(b);
  }
  blocks_[static_cast<size_t>(b)].holders = 1;
  return b;
}

bool KVBlockPool::reserve(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t need = blocks_for(tokens) - static_cast<int64_t>(table.size());
  if (need <= 0) return true;
  if (need > free_blocks()) return false;
  for (int64_t i = 0; i < need; ++i) table.push_back(take_block());
  return true;
}

void KVBlockPool::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Block& block = blocks_[static_cast<size_t>(*it)];
    if (--block.holders > 0) continue;  // still shared
    if (block.registered) {
      block.lru = evictable_.insert(evictable_.end(), *it);
    } else {
      free_.push_back(*it);
    }
  }
  table.clear();
}

int64_t KVBlockPool::match_prefix(const std::vector<int32_t>& tokens, int64_t max_tokens,
                                  std::vector<int32_t>& table) {
  MOEX_CHECK(table.empty(), "KV block pool: match_prefix needs an empty block table");
  const int64_t n = std::min<int64_t>(max_tokens, static_cast<int64_t>(tokens.size()));
  int32_t parent = -1;
  for (int64_t i = 0; (i + 1) * block_size_ <= n; ++i) {
    const auto found = index_.find(key_of(tokens, i, parent));
    if (found == index_.end()) break;
    Block& block = blocks_[static_cast<size_t>(found->second)];
    // The hash found it; the tokens decide (the parent is exact by construction).
    if (!std::equal(block.tokens.begin(), block.tokens.end(), tokens.begin() + i * block_size_))
      break;
    if (block.holders++ == 0) evictable_.erase(block.lru);
    table.push_back(found->second);
    parent = found->second;
  }
  return static_cast<int64_t>(table.size()) * block_size_;
}

void KVBlockPool::register_prefix(const std::vector<int32_t>& tokens, int64_t written,
                                  const std::vector<int32_t>& table, int64_t& registered) {
  const int64_t whole =
      std::min<int64_t>(written, static_cast<int64_t>(tokens.size())) / block_size_;
  for (int64_t i = registered; i < whole && i < static_cast<int64_t>(table.size()); ++i) {
    const int32_t b = table[static_cast<size_t>(i)];
    const int32_t parent = i == 0 ? -1 : table[static_cast<size_t>(i - 1)];
    // A private block after a block that is not registered: its content cannot be found again.
    if (parent >= 0 && !blocks_[static_cast<size_t>(parent)].registered) break;
    Block& block = blocks_[static_cast<size_t>(b)];
    if (block.registered) continue;  // taken from the cache by match_prefix
    const Key key = key_of(tokens, i, parent);
    if (index_.count(key)) {
      // Another sequence registered the same content first: later blocks of this one hang off
      // a private block and cannot be found again.
      registered = whole;
      return;
    }
    block.registered = true;
    block.generation = next_generation_++;
    block.key = key;
    block.tokens.assign(tokens.begin() + i * block_size_, tokens.begin() + (i + 1) * block_size_);
    index_.emplace(key, b);
  }
  registered = std::max(registered, whole);
}

}  // namespace moex::infer
