// Decoding held to a format (OpenAI's response_format json_object and json_schema, forced tool
// calls): before each draw, every token whose text cannot continue the output so far is masked
// out (and so is whitespace before it starts), and once the output is whole only the request's
// stop tokens may follow.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/json_prefix.h"
#include "infer/json_schema.h"

namespace moex::infer {

// The bytes each token adds after ordinary text ([V]); "" for tokens that may never be drawn
// under the constraint (special tokens).
using TokenTexts = std::vector<std::string>;

// A vocabulary's texts, and its tokens sorted by text: the mask walks them in that order, so the
// bytes a token shares with the one before it are read once, and a beginning that cannot
// continue the output rules out every token that shares it at once.
class TokenTable {
 public:
  explicit TokenTable(TokenTexts texts);
  const TokenTexts& texts() const { return texts_; }
  int64_t size() const { return static_cast<int64_t>(texts_.size()); }
  // Token ids with a text, by text; shared()[i]: the bytes sorted()[i] shares with the one before.
  const std::vector<int32_t>& sorted() const { return sorted_; }
  const std::vector<int32_t>& shared() const { return shared_; }
  size_t longest() const { return longest_; }  // bytes of the longest text

 private:
  TokenTexts texts_;
  std::vector<int32_t> sorted_, shared_;
  size_t longest_ = 0;
};

// What the new tokens must write: a block of `prefix` as written, one JSON text matching
// `schema` (no whitespace after it) and `suffix` as written; then, up to `max_blocks`, more
// blocks each after `between`. A tool call in Hermes markup is "<tool_call>\n", the call's
// object, "\n</tool_call>"; parallel calls are such blocks one per line.
struct OutputFormat {
  std::string prefix;
  std::shared_ptr<const JsonSchema> schema;
  std::string suffix;
  int max_blocks = 1;
  std::string between;
};

class JsonConstraint {
 public:
  JsonConstraint(std::shared_ptr<const OutputFormat> format,
                 std::shared_ptr<const TokenTable> tokens);
  // logits [vocab]: -inf for every token that cannot come next; the stop tokens stay only once
  // the output is whole. Returns how many tokens stay.
  int64_t mask(float* logits, int64_t vocab, const std::vector<int32_t>& stop_tokens) const;
  // The token was drawn (it must have stayed in mask).
  void advance(int32_t token);
  bool complete() const;

 private:
  // How far the output has come: into a block's prefix, its JSON text, its suffix, then into
  // the text between it and the next block.
  struct Progress {
    size_t prefix = 0;
    JsonPrefix json;
    size_t suffix = 0;
    size_t between = 0;
    int blocks = 1;  // begun
  };
  bool feed(Progress& p, char c) const;
  bool block_done(const Progress& p) const;
  bool done(const Progress& p) const;
  Progress first_block() const;

  std::shared_ptr<const OutputFormat> format_;
  std::shared_ptr<const TokenTable> tokens_;
  Progress progress_;
};

}  // namespace moex::infer
