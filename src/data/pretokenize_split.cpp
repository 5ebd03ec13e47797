#include "data/pretokenize_split.h"

#include "data/bpe_byte_level.h"
#include "data/unicode.h"

namespace moex::data {
namespace {

// The three patterns as they appear in tokenizer.json (after JSON unescaping).
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool is_other(uint32_t cp) {  // [^\s\p{L}\p{N}]
  return !is_whitespace(cp) && !is_letter(cp) && !is_number(cp);
}

bool is_newline(uint32_t cp) {
  return cp == '\r' || cp == '\n';
}

// Qwen2 / Llama 3: the regex tried at each position, alternatives in order, as a backtracking
// engine would; returns the end of the match starting at i (every position matches something).
size_t match_qwen2_at(std::string_view text, size_t i, int max_digits) {
  const size_t n = text.size();
  auto peek = [&](size_t pos, size_t* end) {
    *end = pos;
    return utf8_next(text, end);
  };
  size_t after = 0;
  const uint32_t c = peek(i, &after);
  // (?i:'s|'t|'re|'ve|'m|'ll|'d): case-insensitive, so 's also takes 'S and 'ſ (U+017F, which
  // folds to s).
  if (c == '\'' && after < n) {
    size_t a_end = 0;
    const uint32_t a = peek(after, &a_end);
    const auto lower = [](uint32_t x) { return x >= 'A' && x <= 'Z' ? x + 32 : x; };
    const uint32_t la = lower(a);
    if (la == 's' || la == 't' || la == 'm' || la == 'd' || a == 0x17F) return a_end;
    if (a_end < n && (la == 'r' || la == 'v' || la == 'l')) {
      size_t b_end = 0;
      const uint32_t lb = lower(peek(a_end, &b_end));
      if (((la == 'r' || la == 'v') && lb == 'e') || (la == 'l' && lb == 'l')) return b_end;
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  auto letters_from = [&](size_t pos) {
    while (pos < n) {
      size_t next = 0;
      if (!is_letter(peek(pos, &next))) break;
      pos = next;
    }
    return pos;
  };
  if (is_letter(c)) return letters_from(after);
  if (!is_newline(c) && !is_number(c) && after < n) {
    size_t next = 0;
    if (is_letter(peek(after, &next))) return letters_from(next);
  }
  // \p{N} or \p{N}{1,3}
  if (is_number(c)) {
    size_t end = after;
    for (int k = 1; k < max_digits && end < n; ++k) {
      size_t next = 0;
      if (!is_number(peek(end, &next))) break;
      end = next;
    }
    return end;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  {
    size_t start = i;
    if (c == ' ' && after < n) {
      size_t next = 0;
      if (is_other(peek(after, &next))) start = after;
    }
    size_t first_end = 0;
    if (is_other(peek(start, &first_end))) {
      size_t end = first_end;
      while (end < n) {
        size_t next = 0;
        if (!is_other(peek(end, &next))) break;
        end = next;
      }
      while (end < n && (text[end] == '\r' || text[end] == '\n')) ++end;
      return end;
    }
  }
  // c is whitespace here. The run of whitespace from i:
  size_t run_end = after, last_newline_end = is_newline(c) ? after : 0, last_start = i;
  while (run_end < n) {
    size_t next = 0;
    const uint32_t w = peek(run_end, &next);
    if (!is_whitespace(w)) break;
    if (is_newline(w)) last_newline_end = next;
    last_start = run_end;
    run_end = next;
  }
  // \s*[\r\n]+: up to the last newline of the run.
  if (last_newline_end > 0) return last_newline_end;
  // \s+(?!\S): the whole run at the end of the text, else all but its last char.
  if (run_end == n) return run_end;
  if (last_start > i) return last_start;
  // \s+: one char (followed by a non-space).
  return run_end;
}

}  // namespace

std::optional<SplitPattern> recognize_split_regex(const std::string& regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  return std::nullopt;
}

std::optional<SplitBehavior> parse_split_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return std::nullopt;
}

std::vector<std::pair<size_t, size_t>> split_matches(const SplitSpec& spec, std::string_view text) {
  std::vector<std::pair<size_t, size_t>> matches;
  switch (spec.pattern) {
    case SplitPattern::kLiteral: {
      if (spec.literal.empty()) break;
      for (size_t pos = text.find(spec.literal); pos != std::string_view::npos;
           pos = text.find(spec.literal, pos + spec.literal.size()))
        matches.emplace_back(pos, pos + spec.literal.size());
      break;
    }
    case SplitPattern::kGpt2:
      for (std::string_view piece : gpt2_split(text)) {
        const size_t begin = static_cast<size_t>(piece.data() - text.data());
        matches.emplace_back(begin, begin + piece.size());
      }
      break;
    case SplitPattern::kQwen2:
    case SplitPattern::kLlama3: {
      const int max_digits = spec.pattern == SplitPattern::kLlama3 ? 3 : 1;
      for (size_t i = 0; i < text.size();) {
        const size_t end = match_qwen2_at(text, i, max_digits);
        matches.emplace_back(i, end);
        i = end;
      }
      break;
    }
  }
  return matches;
}

// As tokenizers' NormalizedString::split: the text becomes (range, is_match) parts, then the
// behavior decides what is kept and what is merged.
std::vector<std::string_view> split_pre_tokenize(const SplitSpec& spec, std::string_view text) {
  struct Part {
    size_t begin, end;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (const auto& [begin, end] : split_matches(spec, text)) {
    if (begin > prev) parts.push_back({prev, begin, spec.invert});
    parts.push_back({begin, end, !spec.invert});
    prev = end;
  }
  if (prev < text.size()) parts.push_back({prev, text.size(), spec.invert});

  std::vector<std::pair<size_t, size_t>> pieces;
  switch (spec.behavior) {
    case SplitBehavior::kIsolated:
      for (const Part& p : parts) pieces.emplace_back(p.begin, p.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Part& p : parts)
        if (!p.match) pieces.emplace_back(p.begin, p.end);
      break;
    case SplitBehavior::kContiguous: {
      bool last_match = false;
      for (const Part& p : parts) {
        if (!pieces.empty() && p.match && last_match)
          pieces.back().second = p.end;
        else
          pieces.emplace_back(p.begin, p.end);
        last_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool last_match = false;
      for (const Part& p : parts) {
        if (p.match && !pieces.empty() && !last_match)
          pieces.back().second = p.end;
        else
          pieces.emplace_back(p.begin, p.end);
        last_match = p.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (previous_match && !pieces.empty() && !p.match)
          pieces.back().second = p.end;
        else
          pieces.emplace_back(p.begin, p.end);
        previous_match = p.match;
      }
      break;
    }
  }
  std::vector<std::string_view> out;
  out.reserve(pieces.size());
  for (const auto& [begin, end] : pieces)
    if (end > begin) out.push_back(text.substr(begin, end - begin));
  return out;
}

}  // namespace moex::data
