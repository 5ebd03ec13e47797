// The Split pre-tokenizer of tokenizer.json for the regex patterns real tokenizers ship, each
// matched by hand (no regex engine): the pattern string is recognized exactly, anything else is
// an error for the caller to report.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moex::data {

enum class SplitPattern {
  kLiteral,  // {"String": s}: every occurrence of s
  kGpt2,     // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kQwen2,    // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
             // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,   // the same with \p{N}{1,3} in place of \p{N}
};

// The hand-written splitter for a {"Regex": ...} pattern string, or nothing if there is none.
std::optional<SplitPattern> recognize_split_regex(const std::string& regex);

// HF's SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
std::optional<SplitBehavior> parse_split_behavior(const std::string& name);

struct SplitSpec {
  SplitPattern pattern = SplitPattern::kQwen2;
  std::string literal;  // kLiteral
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

// Byte ranges [begin, end) of the pattern's matches in `text`, left to right, non-overlapping
// (what Regex::find_iter gives).
std::vector<std::pair<size_t, size_t>> split_matches(const SplitSpec& spec, std::string_view text);

// The pieces Split produces from `text`, as views into it (empty pieces dropped, as HF does).
std::vector<std::string_view> split_pre_tokenize(const SplitSpec& spec, std::string_view text);

}  // namespace moex::data
