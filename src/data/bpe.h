// The BPE model of Hugging Face tokenizers: applies ranked merges to one pre-tokenized word.
// It knows nothing of JSON; tokenizer_json.cpp builds it and names the file in any error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moex::data {

struct BpeMerge {
  int32_t left_id, right_id, merged_id;  // rank = position in the merges list
};

struct BpeOptions {
  bool byte_fallback = false;  // unknown chars become <0xNN> byte tokens (Llama, Mistral)
  int32_t unk_id = -1;         // -1: unknown chars are dropped (as HF does with no unk_token)
  bool fuse_unk = false;       // consecutive unknowns become one unk
  bool ignore_merges = false;  // a word found whole in the vocab is emitted as is (Llama 3)
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
};

class BpeModel {
 public:
  // `vocab`: token -> id. `merges` in rank order; their ids must be in `vocab` (checked by the
  // caller, which knows the file to name).
  BpeModel(std::unordered_map<std::string, int32_t> vocab, const std::vector<BpeMerge>& merges,
           BpeOptions options);

  // Appends the ids of one word. O(n log n) in the word's length: a heap of candidate merges
  // over a linked list of symbols, lowest rank first, leftmost first among equal ranks.
  void encode_word(std::string_view word, std::vector<int32_t>* ids) const;

  int32_t token_to_id(const std::string& token) const;  // -1 when absent
  const std::string* id_to_token(int32_t id) const;     // nullptr when absent
  int64_t num_ids() const { return static_cast<int64_t>(id_to_token_.size()); }  // max id + 1

 private:
  struct MergeTarget {
    int32_t rank, merged_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<uint8_t> has_id_;
  std::unordered_map<uint64_t, MergeTarget> merges_;
  int32_t byte_ids_[256];  // id of <0xNN>, -1 when absent
  BpeOptions options_;
};

}  // namespace moex::data
