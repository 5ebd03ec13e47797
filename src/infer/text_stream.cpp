#include "infer/text_stream.h"

#include <utility>

namespace moex::infer {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

bool ends_incomplete(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.size() >= prefix.size() && text.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

TextStream::TextStream(const data::Tokenizer& tokenizer, std::vector<int32_t> prompt)
    : tokenizer_(tokenizer), ids_(std::move(prompt)) {
  prompt_text_ = tokenizer_.decode(ids_, true);
  emitted_ = prompt_text_;
}

std::string TextStream::decode_all() const {
  return tokenizer_.decode(ids_, true);
}

std::string TextStream::push(int32_t id) {
  ids_.push_back(id);
  const std::string text = decode_all();
  if (ends_incomplete(text) || text.size() <= emitted_.size() || !starts_with(text, emitted_))
    return "";
  std::string piece = text.substr(emitted_.size());
  emitted_ = text;
  return piece;
}

std::string TextStream::finish() {
  const std::string text = decode_all();
  if (text.size() <= emitted_.size() || !starts_with(text, emitted_)) return "";
  std::string piece = text.substr(emitted_.size());
  emitted_ = text;
  return piece;
}

std::string TextStream::generated_text() const {
  const std::string text = decode_all();
  return starts_with(text, prompt_text_) ? text.substr(prompt_text_.size()) : "";
}

}  // namespace moex::infer
