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

JsonConstraint::JsonConstraint(std::shared_ptr<const OutputFormat> format,
                               std::shared_ptr<const TokenTexts> texts)
    : format_(std::move(format)),
      texts_(std::move(texts)),
      progress_{0, JsonPrefix(schema_of(format_)), 0} {
  MOEX_CHECK(texts_ != nullptr, "JsonConstraint: no token texts");
  progress_.json.limit_whitespace(kMaxIndent);
}

bool JsonConstraint::feed(Progress& p, char c) const {
  const std::string& prefix = format_->prefix;
  const std::string& suffix = format_->suffix;
  if (p.prefix < prefix.size()) return c == prefix[p.prefix++];
  if (p.suffix > 0 || (!suffix.empty() && p.json.complete() && c == suffix[0])) {
    if (p.suffix == suffix.size()) return false;
    return c == suffix[p.suffix++];
  }
  // Whitespace after the whole text would only delay the suffix (or the stop token).
  if ((c == ' ' || c == '\n' || c == '\t' || c == '\r') && p.json.complete()) return false;
  return p.json.feed(c);
}

bool JsonConstraint::done(const Progress& p) const {
  return p.prefix == format_->prefix.size() &&
         (format_->suffix.empty() ? p.json.complete() : p.suffix == format_->suffix.size());
}

bool JsonConstraint::complete() const {
  return done(progress_);
}

int64_t JsonConstraint::mask(float* logits, int64_t vocab, const std::vector<int32_t>& stop) const {
  MOEX_CHECK(static_cast<int64_t>(texts_->size()) == vocab, "JsonConstraint: ", texts_->size(),
             " token texts for a vocabulary of ", vocab);
  constexpr float kNever = -std::numeric_limits<float>::infinity();
  const bool whole = done(progress_);
  int64_t kept = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const bool is_stop = std::find(stop.begin(), stop.end(), v) != stop.end();
    bool ok;
    if (whole || is_stop) {
      ok = whole && is_stop;  // the output is written: end here
    } else {
      const std::string& text = (*texts_)[static_cast<size_t>(v)];
      Progress next = progress_;
      ok = !text.empty();
      for (size_t i = 0; ok && i < text.size(); ++i) ok = feed(next, text[i]);
      // Whitespace before the output adds nothing, and a model can repeat it without end.
      ok = ok && (next.prefix > 0 || next.json.started());
    }
    if (ok)
      ++kept;
    else
      logits[v] = kNever;
  }
  return kept;
}

void JsonConstraint::advance(int32_t token) {
  if (done(progress_)) return;  // a stop token
  const std::string& text = (*texts_)[static_cast<size_t>(token)];
  bool ok = true;
  for (size_t i = 0; ok && i < text.size(); ++i) ok = feed(progress_, text[i]);
  MOEX_CHECK(ok, "JsonConstraint: token ", token, " does not continue the output (masked out?)");
}

}  // namespace moex::infer
