// The text a client sees of one generation: tokens are detokenized incrementally (TextStream),
// and the text ends before the first stop string. While a stop string could still be forming
// at the end of the text, that tail is held back, so a streamed client never sees a part of it.
#pragma once

#include <string>
#include <vector>

#include "infer/text_stream.h"

namespace moex::serve {

class StopText {
 public:
  StopText(const data::Tokenizer& tokenizer, std::vector<int32_t> prompt,
           std::vector<std::string> stop);

  // Adds a generated token; returns the text that may be sent now. stopped() turns true when a
  // stop string appeared (the text before it has then all been returned).
  std::string push(int32_t token);
  // After the last token: the text held back.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  // Releases text up to `end` (an index into text_) that was not yet released.
  std::string release(size_t end);
  bool cut_at_stop();

  infer::TextStream stream_;
  std::vector<std::string> stop_;
  size_t longest_stop_ = 0;
  std::string text_;  // everything decoded so far
  size_t sent_ = 0;   // bytes of text_ returned
  bool stopped_ = false;
};

}  // namespace moex::serve
