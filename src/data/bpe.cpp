#include "data/bpe.h"

#include <cstdio>
#include <queue>

#include "data/unicode.h"

namespace moex::data {

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab,
                   const std::vector<BpeMerge>& merges, BpeOptions options)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  int64_t max_id = -1;  // 64-bit: max_id + 1 overflows int32 for an id of INT32_MAX
  for (const auto& [token, id] : vocab_) max_id = std::max<int64_t>(max_id, id);
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  has_id_.assign(id_to_token_.size(), 0);
  for (const auto& [token, id] : vocab_) {
    if (id < 0) continue;
    id_to_token_[id] = token;
    has_id_[id] = 1;
  }
  merges_.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& m = merges[rank];
    // The first occurrence wins, as in HF (a later duplicate cannot have a lower rank).
    merges_.emplace(pair_key(m.left_id, m.right_id),
                    MergeTarget{static_cast<int32_t>(rank), m.merged_id});
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_ids_[b] = token_to_id(name);
  }
}

int32_t BpeModel::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || id >= num_ids() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

namespace {

struct Symbol {
  int32_t id;
  int32_t prev, next;  // -1 at the ends
  bool alive;
};

struct Candidate {
  int32_t rank, pos, merged_id;
  bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    const int32_t whole = token_to_id(std::string(word));
    if (whole >= 0) {
      ids->push_back(whole);
      return;
    }
  }
  // Initial symbols: one per character (with the subword prefix/suffix decorations), unknown
  // characters as byte tokens or unk, following HF's BPE::merge_word.
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id) {
    const int32_t idx = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, idx - 1, -1, true});
    if (idx > 0) symbols[idx - 1].next = idx;
  };
  int32_t pending_unk = 0;  // count of unknown chars not yet emitted (fuse_unk)
  auto flush_unk = [&]() {
    if (pending_unk > 0) add(options_.unk_id);
    pending_unk = 0;
  };
  std::string piece;
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t start = pos;
    utf8_next(word, &pos);
    piece.clear();
    if (start > 0) piece += options_.continuing_subword_prefix;
    piece.append(word.substr(start, pos - start));
    if (pos == word.size()) piece += options_.end_of_word_suffix;
    const int32_t id = token_to_id(piece);
    if (id >= 0) {
      flush_unk();
      add(id);
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes = true;
      for (unsigned char c : piece) all_bytes = all_bytes && byte_ids_[c] >= 0;
      if (all_bytes) {
        flush_unk();
        for (unsigned char c : piece) add(byte_ids_[c]);
        continue;
      }
    }
    if (options_.unk_id >= 0) {
      if (!options_.fuse_unk) flush_unk();
      ++pending_unk;
    }
  }
  flush_unk();

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push_pair = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) heap.push({it->second.rank, left, it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // A stale entry: one side has merged since it was pushed.
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next)
    ids->push_back(symbols[i].id);
}

}  // namespace moex::data
