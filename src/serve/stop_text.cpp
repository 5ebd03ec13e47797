#include "serve/stop_text.h"

#include <algorithm>

namespace moex::serve {

StopText::StopText(const data::Tokenizer& tokenizer, std::vector<int32_t> prompt,
                   std::vector<std::string> stop)
    : stream_(tokenizer, std::move(prompt)), stop_(std::move(stop)) {
  for (const std::string& s : stop_) longest_stop_ = std::max(longest_stop_, s.size());
}

std::string StopText::release(size_t end) {
  // Never split a UTF-8 character: back up to the start of the one at `end`.
  while (end > sent_ && end < text_.size() && (static_cast<unsigned char>(text_[end]) & 0xC0) == 0x80)
    --end;
  if (end <= sent_) return "";
  std::string out = text_.substr(sent_, end - sent_);
  sent_ = end;
  return out;
}

// Cuts text_ at the earliest stop string, if one appears. Text already sent never holds one:
// the last longest_stop_ - 1 bytes are always held back, so a match starts at sent_ or later.
bool StopText::cut_at_stop() {
  size_t first = std::string::npos;
  const size_t from = sent_ >= longest_stop_ ? sent_ - longest_stop_ + 1 : 0;
  for (const std::string& s : stop_) {
    const size_t at = text_.find(s, from);
    if (at != std::string::npos) first = std::min(first, at);
  }
  if (first == std::string::npos) return false;
  stopped_ = true;
  text_.resize(std::max(first, sent_));
  return true;
}

std::string StopText::push(int32_t token) {
  if (stopped_) return "";
  text_ += stream_.push(token);
  if (cut_at_stop()) return release(text_.size());
  const size_t hold = longest_stop_ > 0 ? longest_stop_ - 1 : 0;
  return text_.size() > hold ? release(text_.size() - hold) : "";
}

std::string StopText::finish() {
  if (!stopped_) {
    text_ += stream_.finish();
    cut_at_stop();
  }
  if (text_.size() <= sent_) return "";
  std::string out = text_.substr(sent_);
  sent_ = text_.size();
  return out;
}

}  // namespace moex::serve
