#include "infer/json_constraint.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace moex::infer {

namespace {

// Spaces after a newline between tokens: a pretty-printed object a few levels deep.
constexpr int kMaxIndent = 16;

const JsonSchema& schema_of(const std::shared_ptr<const OutputFormat>& format) {
  MOEX_CHECK(format != nullptr && format->schema != nullptr, "JsonConstraint: no schema");
  return *format->schema;
}

}  // namespace

TokenTable::TokenTable(TokenTexts texts) : texts_(std::move(texts)) {
  for (size_t v = 0; v < texts_.size(); ++v)
    if (!texts_[v].empty()) sorted_.push_back(static_cast<int32_t>(v));
  std::sort(sorted_.begin(), sorted_.end(),
            [this](int32_t a, int32_t b) { return texts_[a] < texts_[b]; });
  shared_.resize(sorted_.size());
  for (size_t i = 0; i < sorted_.size(); ++i) {
    const std::string& text = texts_[sorted_[i]];
    longest_ = std::max(longest_, text.size());
    if (i == 0) continue;
    const std::string& before = texts_[sorted_[i - 1]];
    const auto mismatch = std::mismatch(text.begin(), text.end(), before.begin(), before.end());
    shared_[i] = static_cast<int32_t>(mismatch.first - text.begin());
  }
}

JsonConstraint::JsonConstraint(std::shared_ptr<const OutputFormat> format,
                               std::shared_ptr<const TokenTable> tokens)
    : format_(std::move(format)), tokens_(std::move(tokens)), progress_(first_block()) {
  MOEX_CHECK(tokens_ != nullptr, "JsonConstraint: no token texts");
}

JsonConstraint::Progress JsonConstraint::first_block() const {
  Progress p{0, JsonPrefix(schema_of(format_)), 0, 0, 1};
  p.json.limit_whitespace(kMaxIndent);
  return p;
}

bool JsonConstraint::feed(Progress& p, char c) const {
  const std::string& prefix = format_->prefix;
  const std::string& suffix = format_->suffix;
  if (format_->max_blocks > 1 && block_done(p)) {
    // Another block, after the text between blocks.
    const std::string& between = format_->between;
    if (p.blocks >= format_->max_blocks) return false;
    if (p.between < between.size()) {
      if (c != between[p.between++]) return false;
      if (p.between < between.size()) return true;
    }
    const int blocks = p.blocks + 1;
    p = first_block();
    p.blocks = blocks;
    if (p.between == 0 && !between.empty()) return true;  // c ended the text between
  }
  if (p.prefix < prefix.size()) return c == prefix[p.prefix++];
  if (p.suffix > 0 || (!suffix.empty() && p.json.complete() && c == suffix[0])) {
    if (p.suffix == suffix.size()) return false;
    return c == suffix[p.suffix++];
  }
  // Whitespace after the whole text would only delay the suffix (or the stop token).
  if ((c == ' ' || c == '\n' || c == '\t' || c == '\r') && p.json.complete()) return false;
  return p.json.feed(c);
}

bool JsonConstraint::block_done(const Progress& p) const {
  return p.prefix == format_->prefix.size() &&
         (format_->suffix.empty() ? p.json.complete() : p.suffix == format_->suffix.size());
}

bool JsonConstraint::done(const Progress& p) const {
  return block_done(p) && p.between == 0;
}

bool JsonConstraint::complete() const {
  return done(progress_);
}

int64_t JsonConstraint::mask(float* logits, int64_t vocab, const std::vector<int32_t>& stop) const {
  MOEX_CHECK(tokens_->size() == vocab, "JsonConstraint: ", tokens_->size(),
             " token texts for a vocabulary of ", vocab);
  const TokenTexts& texts = tokens_->texts();
  std::vector<uint8_t> keep(static_cast<size_t>(vocab), 0);
  // A whole output may still go on (a number at the top level: "1" may become "12"), so the
  // tokens are tried even then; the stop tokens stay only once it is whole.
  {
    // states[j]: the progress after the first j bytes of the text being tried; the first
    // `valid` + 1 of them belong to the text tried last.
    std::vector<Progress> states;
    states.reserve(tokens_->longest() + 1);
    states.push_back(progress_);
    size_t valid = 0;
    const std::vector<int32_t>& sorted = tokens_->sorted();
    const std::vector<int32_t>& shared = tokens_->shared();
    for (size_t i = 0; i < sorted.size();) {
      const std::string& text = texts[static_cast<size_t>(sorted[i])];
      size_t j = std::min(static_cast<size_t>(shared[i]), valid);
      bool alive = true;
      for (; j < text.size(); ++j) {
        if (states.size() == j + 1)
          states.push_back(states[j]);
        else
          states[j + 1] = states[j];
        if (!feed(states[j + 1], text[j])) {
          alive = false;
          break;
        }
      }
      valid = j;
      if (!alive) {
        // Every text that shares the j + 1 bytes that cannot continue is ruled out with it.
        for (++i; i < sorted.size() && static_cast<size_t>(shared[i]) > j;) ++i;
        continue;
      }
      // Whitespace before the output adds nothing, and a model can repeat it without end.
      const Progress& after = states[text.size()];
      if (after.prefix > 0 || after.json.started()) keep[static_cast<size_t>(sorted[i])] = 1;
      ++i;
    }
    const bool whole = done(progress_);
    for (int32_t t : stop)
      if (t >= 0 && t < vocab) keep[static_cast<size_t>(t)] = whole;
  }
  constexpr float kNever = -std::numeric_limits<float>::infinity();
  int64_t kept = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (keep[static_cast<size_t>(v)])
      ++kept;
    else
      logits[v] = kNever;
  }
  return kept;
}

void JsonConstraint::advance(int32_t token) {
  const std::string& text = tokens_->texts()[static_cast<size_t>(token)];
  Progress next = progress_;
  bool ok = !text.empty();
  for (size_t i = 0; ok && i < text.size(); ++i) ok = feed(next, text[i]);
  if (!ok && done(progress_)) return;  // a stop token after the whole output
  MOEX_CHECK(ok, "JsonConstraint: token ", token, " does not continue the output (masked out?)");
  progress_ = std::move(next);
}

}  // namespace moex::infer
