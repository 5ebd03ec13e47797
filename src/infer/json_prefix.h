// JSON read byte by byte (RFC 8259), for decoding constrained to JSON (OpenAI's response_format
// json_object): feed() says whether the bytes so far can still begin a JSON text, complete()
// whether they are one. A small copyable state, so that a decoding step can try every token of
// the vocabulary from the same point (infer/json_constraint.h).
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace moex::infer {

class JsonPrefix {
 public:
  static constexpr int kMaxDepth = 64;  // deeper nesting is refused

  // object_only: the text must be one object (leading and trailing whitespace allowed).
  explicit JsonPrefix(bool object_only = false) : object_only_(object_only) {}

  // Adds bytes; false when they cannot continue any JSON text (the state is then unusable: copy
  // the object before trying bytes that may fail).
  bool feed(char c);
  bool feed(std::string_view bytes);
  // The bytes so far are one whole JSON text (a number at the end counts as finished).
  bool complete() const;
  // The top-level value has begun (anything but whitespace was read).
  bool started() const { return started_; }

 private:
  enum class State : uint8_t {
    kValue,         // a value is due (whitespace allowed)
    kArrayFirst,    // after '[': a value or ']'
    kObjectFirst,   // after '{': a key or '}'
    kKey,           // after ',' in an object: a key
    kColon,         // after a key
    kAfterValue,    // a value ended: ',', the closing bracket, or the end
    kString,        // inside a string (key_ says which kind)
    kEscape,        // after '\' in a string
    kHex,           // in \uXXXX (hex_left_ digits to go)
    kLiteral,       // in true / false / null (literal_ and literal_pos_)
    kMinus,         // number: after '-'
    kZero,          // number: a leading 0
    kInteger,       // number: integer digits
    kDot,           // number: after '.'
    kFraction,      // number: fraction digits
    kExponent,      // number: after 'e'
    kExponentSign,  // number: after the exponent's sign
    kExponentDigits,
  };
  bool value_start(char c);
  bool end_value();          // a value ended: to kAfterValue
  bool after_value(char c);  // c read in kAfterValue
  bool number_end(char c);   // c ends a number: read it in kAfterValue
  bool in_number() const;

  std::array<uint8_t, kMaxDepth> stack_{};  // 1 = object, 0 = array
  int depth_ = 0;
  State state_ = State::kValue;
  bool key_ = false;  // the string being read is an object key
  bool object_only_ = false;
  bool started_ = false;  // the top-level value has begun
  uint8_t hex_left_ = 0;
  uint8_t literal_ = 0, literal_pos_ = 0;
};

}  // namespace moex::infer
