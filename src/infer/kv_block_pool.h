// Hands out the blocks of a paged KV cache (model/paged_kv.h): a free list of block ids; each
// sequence's block table grows as it does and goes back whole when it ends.
//
// Prefix caching (docs/architecture.md, "Prefix caching"): a block whose positions all hold the
// keys and values of known tokens (a prompt's, then the ones generated after it) can be registered
// under its tokens and the block before it. A later sequence
// whose prompt starts with the same tokens takes those blocks (shared, reference-counted) instead
// of computing them again. A registered block nobody holds stays cached until its id is needed:
// reserve() takes never-registered free blocks first, then evicts the cached block released
// longest ago.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace moex::infer {

class KVBlockPool {
 public:
  KVBlockPool(int64_t num_blocks, int64_t block_size);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  // Blocks reserve() can hand out: the free ones and the cached ones nobody holds.
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size() + evictable_.size()); }
  // Registered blocks (held or not).
  int64_t cached_blocks() const { return static_cast<int64_t>(index_.size()); }
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Grows `table` to cover `tokens` positions. False, taking nothing, when too few are free.
  bool reserve(std::vector<int32_t>& table, int64_t tokens);
  // Gives back every block of `table` (a shared block when its last holder does) and clears it.
  void release(std::vector<int32_t>& table);

  // Appends to an empty `table` the registered blocks that hold tokens [0, n) of `tokens`, for the
  // largest n <= max_tokens that is a whole number of blocks, and returns n.
  int64_t match_prefix(const std::vector<int32_t>& tokens, int64_t max_tokens,
                       std::vector<int32_t>& table);
  // Registers the blocks of `table` whose positions are all below `written` (their keys and values
  // are in the cache, for tokens[0, written)), from block `registered` on, and sets `registered`
  // past them. A block whose content another block holds already stays private.
  void register_prefix(const std::vector<int32_t>& tokens, int64_t written,
                       const std::vector<int32_t>& table, int64_t& registered);

 private:
  // A registered block is found by its tokens and the block before it (as that block was when
  // this one was registered: `generation` tells a reused id apart), so a match is a whole prefix.
  struct Key {
    int32_t parent = -1;
    uint64_t parent_generation = 0;
    uint64_t tokens_hash = 0;
    bool operator==(const Key& o) const {
      return parent == o.parent && parent_generation == o.parent_generation &&
             tokens_hash == o.tokens_hash;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  struct Block {
    int32_t holders = 0;
    bool registered = false;
    uint64_t generation = 0;      // when registered, unique
    Key key;                      // when registered
    std::vector<int32_t> tokens;  // when registered: its block_size tokens (checked on a match)
    std::list<int32_t>::iterator lru;  // when registered and held by nobody: in evictable_
  };
  Key key_of(const std::vector<int32_t>& tokens, int64_t block_index, int32_t parent) const;
  int32_t take_block();  // a free block, else the evictable one released longest ago
  void unregister(int32_t b);

  int64_t num_blocks_, block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;     // a stack: the most recently freed block is reused first
  std::list<int32_t> evictable_;  // registered blocks nobody holds, least recently released first
  std::unordered_map<Key, int32_t, KeyHash> index_;
  uint64_t next_generation_ = 1;
};

}  // namespace moex::infer
