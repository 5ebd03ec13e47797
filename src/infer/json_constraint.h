// Decoding constrained to one JSON object (OpenAI's response_format json_object): before each
// draw, every token whose text cannot continue the JSON written so far is masked out (and so is
// whitespace before the object), and once the object is whole only the request's stop tokens may
// follow.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/json_prefix.h"

namespace moex::infer {

// The bytes each token adds after ordinary text ([V]); "" for tokens that may never be drawn
// under the constraint (special tokens).
using TokenTexts = std::vector<std::string>;

class JsonConstraint {
 public:
  explicit JsonConstraint(std::shared_ptr<const TokenTexts> texts);
  // logits [vocab]: -inf for every token that cannot come next; the stop tokens stay only once
  // the object is whole. Returns how many tokens stay.
  int64_t mask(float* logits, int64_t vocab, const std::vector<int32_t>& stop_tokens) const;
  // The token was drawn (it must have stayed in mask).
  void advance(int32_t token);
  bool complete() const { return json_.complete(); }

 private:
  std::shared_ptr<const TokenTexts> texts_;
  JsonPrefix json_{/*object_only=*/true};
};

}  // namespace moex::infer
