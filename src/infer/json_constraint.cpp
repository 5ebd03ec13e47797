#include "infer/json_constraint.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace moex::infer {

JsonConstraint::JsonConstraint(std::shared_ptr<const TokenTexts> texts) : texts_(std::move(texts)) {
  MOEX_CHECK(texts_ != nullptr, "JsonConstraint: no token texts");
}

int64_t JsonConstraint::mask(float* logits, int64_t vocab, const std::vector<int32_t>& stop) const {
  MOEX_CHECK(static_cast<int64_t>(texts_->size()) == vocab, "JsonConstraint: ", texts_->size(),
             " token texts for a vocabulary of ", vocab);
  constexpr float kNever = -std::numeric_limits<float>::infinity();
  const bool whole = json_.complete();
  int64_t kept = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    const bool is_stop = std::find(stop.begin(), stop.end(), v) != stop.end();
    bool ok;
    if (whole) {
      ok = is_stop;  // the object is written: end here
    } else {
      const std::string& text = (*texts_)[static_cast<size_t>(v)];
      JsonPrefix next = json_;
      // Whitespace before the object adds nothing, and a model can repeat it without end.
      ok = !text.empty() && !is_stop && next.feed(text) && next.started();
    }
    if (ok)
      ++kept;
    else
      logits[v] = kNever;
  }
  return kept;
}

void JsonConstraint::advance(int32_t token) {
  if (json_.complete()) return;  // a stop token
  const bool ok = json_.feed((*texts_)[static_cast<size_t>(token)]);
  MOEX_CHECK(ok, "JsonConstraint: token ", token, " does not continue the JSON (masked out?)");
}

}  // namespace moex::infer
