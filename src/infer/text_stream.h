// Streaming detokenisation of generated ids after a prompt. Tokens do not decode one by one:
// a SentencePiece word piece "▁system" decodes to " system" after other text but to "system" at
// the start of a decode (the leading space is dropped there), and a character split over
// byte-fallback or byte-level tokens is incomplete until its last byte arrives. So the text of
// the generation is decode(prompt + generated) with decode(prompt) removed from its front, and
// each token streams the part of that text it adds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace moex::infer {

class TextStream {
 public:
  // Decodes with skip_special_tokens, so BOS/EOS and control tokens add no text.
  TextStream(const data::Tokenizer& tokenizer, std::vector<int32_t> prompt);

  // decode(prompt): what to print before the generated text.
  const std::string& prompt_text() const { return prompt_text_; }

  // Adds a generated id and returns the text it completes: "" while the decoded text ends in an
  // incomplete character (U+FFFD) or does not yet extend what was returned before.
  std::string push(int32_t id);

  // After the last id: the text not yet returned (an incomplete character at the very end
  // included, as U+FFFD). All push() results plus finish() equal generated_text().
  std::string finish();

  // decode(prompt + generated) without its decode(prompt) prefix ("" if it does not start with
  // it, which SentencePiece and BPE decoding never do for a prompt of whole characters).
  std::string generated_text() const;

 private:
  std::string decode_all() const;

  const data::Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;  // prompt, then generated
  std::string prompt_text_;
  std::string emitted_;  // decode(prompt) + every piece returned so far
};

}  // namespace moex::infer
