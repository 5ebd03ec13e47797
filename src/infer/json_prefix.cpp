#include "infer/json_prefix.h"

namespace moex::infer {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
constexpr const char* kLiterals[] = {"true", "false", "null"};

}  // namespace

bool JsonPrefix::feed(std::string_view bytes) {
  for (char c : bytes)
    if (!feed(c)) return false;
  return true;
}

bool JsonPrefix::in_number() const {
  switch (state_) {
    case State::kZero:
    case State::kInteger:
    case State::kFraction:
    case State::kExponentDigits:
      return true;
    default:
      return false;
  }
}

bool JsonPrefix::complete() const {
  return depth_ == 0 && started_ && (state_ == State::kAfterValue || in_number());
}

bool JsonPrefix::value_start(char c) {
  if (is_space(c)) return true;
  const bool top = depth_ == 0;
  if (top && started_) return false;
  if (top && object_only_ && c != '{') return false;
  started_ = true;
  switch (c) {
    case '{':
    case '[':
      if (depth_ == kMaxDepth) return false;
      stack_[depth_++] = c == '{';
      state_ = c == '{' ? State::kObjectFirst : State::kArrayFirst;
      return true;
    case '"':
      key_ = false;
      state_ = State::kString;
      return true;
    case '-':
      state_ = State::kMinus;
      return true;
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      literal_pos_ = 1;
      state_ = State::kLiteral;
      return true;
    default:
      if (!is_digit(c)) return false;
      state_ = c == '0' ? State::kZero : State::kInteger;
      return true;
  }
}

bool JsonPrefix::end_value() {
  state_ = State::kAfterValue;
  return true;
}

bool JsonPrefix::after_value(char c) {
  if (is_space(c)) return true;
  if (depth_ == 0) return false;  // only whitespace after the whole text
  const bool object = stack_[depth_ - 1] == 1;
  if (c == ',') {
    state_ = object ? State::kKey : State::kValue;
    return true;
  }
  if (c == (object ? '}' : ']')) {
    --depth_;
    return end_value();
  }
  return false;
}

bool JsonPrefix::number_end(char c) {
  state_ = State::kAfterValue;
  return after_value(c);
}

bool JsonPrefix::feed(char c) {
  switch (state_) {
    case State::kValue:
      return value_start(c);
    case State::kArrayFirst:
      if (c == ']') {
        --depth_;
        return end_value();
      }
      return value_start(c);
    case State::kObjectFirst:
    case State::kKey:
      if (is_space(c)) return true;
      if (c == '}' && state_ == State::kObjectFirst) {
        --depth_;
        return end_value();
      }
      if (c != '"') return false;
      key_ = true;
      state_ = State::kString;
      return true;
    case State::kColon:
      if (is_space(c)) return true;
      if (c != ':') return false;
      state_ = State::kValue;
      return true;
    case State::kAfterValue:
      return after_value(c);
    case State::kString:
      if (c == '"') {
        if (key_) {
          state_ = State::kColon;
          return true;
        }
        return end_value();
      }
      if (c == '\\') {
        state_ = State::kEscape;
        return true;
      }
      return static_cast<unsigned char>(c) >= 0x20;  // control characters must be escaped
    case State::kEscape:
      if (c == 'u') {
        hex_left_ = 4;
        state_ = State::kHex;
        return true;
      }
      state_ = State::kString;
      return c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
             c == 't';
    case State::kHex:
      if (!is_hex(c)) return false;
      if (--hex_left_ == 0) state_ = State::kString;
      return true;
    case State::kLiteral: {
      const char* word = kLiterals[literal_];
      if (c != word[literal_pos_]) return false;
      if (word[++literal_pos_] == '\0') return end_value();
      return true;
    }
    case State::kMinus:
      if (!is_digit(c)) return false;
      state_ = c == '0' ? State::kZero : State::kInteger;
      return true;
    case State::kZero:
    case State::kInteger:
      if (is_digit(c) && state_ == State::kInteger) return true;
      if (c == '.') {
        state_ = State::kDot;
        return true;
      }
      if (c == 'e' || c == 'E') {
        state_ = State::kExponent;
        return true;
      }
      return number_end(c);
    case State::kDot:
      if (!is_digit(c)) return false;
      state_ = State::kFraction;
      return true;
    case State::kFraction:
      if (is_digit(c)) return true;
      if (c == 'e' || c == 'E') {
        state_ = State::kExponent;
        return true;
      }
      return number_end(c);
    case State::kExponent:
      if (c == '+' || c == '-') {
        state_ = State::kExponentSign;
        return true;
      }
      [[fallthrough]];
    case State::kExponentSign:
      if (!is_digit(c)) return false;
      state_ = State::kExponentDigits;
      return true;
    case State::kExponentDigits:
      if (is_digit(c)) return true;
      return number_end(c);
  }
  return false;
}

}  // namespace moex::infer
