// JSON read byte by byte (RFC 8259) and held to a schema (infer/json_schema.h), for decoding
// constrained to JSON: feed() says whether the bytes so far can still begin a JSON text that
// matches, complete() whether they are one. Copyable, so that a decoding step can try every
// token of the vocabulary from the same point (infer/json_constraint.h).
//
// An anyOf whose alternatives could begin with the same byte keeps one reading per alternative
// until the bytes tell them apart (at most kMaxReadings at once; past that a byte is refused).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "infer/json_schema.h"

namespace moex::infer {

class JsonPrefix {
 public:
  static constexpr int kMaxDepth = 64;     // deeper nesting is refused
  static constexpr int kMaxReadings = 64;  // live anyOf readings

  // Any JSON text, or (object_only) one object; leading and trailing whitespace allowed.
  explicit JsonPrefix(bool object_only = false);
  // A JSON text matching `schema`, which must outlive this reader and its copies (they are made
  // for every token of a vocabulary, so they hold no reference count).
  explicit JsonPrefix(const JsonSchema& schema);

  // Adds bytes; false when they cannot continue any matching JSON text (the state is then
  // unusable: copy the object before trying bytes that may fail).
  bool feed(char c);
  bool feed(std::string_view bytes);
  // The bytes so far are one whole matching JSON text (a number at the end counts as finished).
  bool complete() const;
  // The top-level value has begun (anything but whitespace was read).
  bool started() const { return started_; }
  // Between tokens (not inside strings) allows only one space, or a newline and at most `indent`
  // spaces: JSON allows any whitespace, and a model held to JSON can otherwise write it until its
  // token limit. Compact and pretty-printed JSON (spaces for indents) stay allowed.
  void limit_whitespace(int indent) { max_indent_ = indent; }

 private:
  enum class Phase : uint8_t {
    kValue,         // a value of `node` is due (whitespace allowed)
    kObjectFirst,   // after '{': a key or '}'
    kObjectKey,     // after ',' in an object: a key
    kKey,           // inside a key (cand: declared names still matching)
    kColon,         // after a key
    kObjectValue,   // the frame above writes the value of property `key`
    kObjectAfter,   // a property's value ended: ',' or '}'
    kArrayFirst,    // after '[': an item or ']'
    kArrayValue,    // the frame above writes an item
    kArrayAfter,    // an item ended: ',' or ']'
    kArrayNext,     // after ',' in an array: an item
    kString,        // inside a string value
    kLiteral,       // inside one of the node's enum/const texts (cand, pos)
    kWord,          // inside true / false / null (cand: which, pos)
    kMinus,         // number: after '-'
    kZero,          // number: a leading 0
    kInteger,       // number: integer digits
    kDot,           // number: after '.'
    kFraction,      // number: fraction digits
    kExponent,      // number: after 'e'
    kExponentSign,  // number: after the exponent's sign
    kExponentDigits,
    kDone,  // the top-level value ended: whitespace only
  };
  // One value being written. No member initializers: a Reading's unused frames stay untouched.
  struct Frame {
    int32_t node;  // its schema node
    Phase phase;
    uint8_t lex;    // strings and keys: 0 plain, kEscape after '\', kEscape + n: n hex digits due
    uint16_t pos;   // bytes of the key (unescaped) or literal read
    int32_t count;  // array: items begun; string: characters
    int32_t key;    // object: the property being written (-1: a key not declared)
    uint64_t seen;  // object: properties written
    uint64_t cand;  // key or literal candidates (bits)
    uint16_t hex;   // the \u escape's digits so far
    bool low_due;   // a high surrogate was read: a \uDC00-\uDFFF must follow
    uint8_t utf8_left;  // continuation bytes the UTF-8 sequence being read still needs
    uint8_t utf8_lead;  // that sequence's first byte (its second byte's range depends on it)
  };
  // One way of reading the bytes so far: the stack of values being written (frames[0] the top
  // level). Copies move only the frames in use.
  struct Reading {
    int depth = 0;
    int whitespace = 0;    // whitespace bytes in a row, outside strings
    bool newline = false;  // that run began with a newline
    Frame frames[kMaxDepth + 1];
    Reading() = default;
    Reading(const Reading& other) { *this = other; }
    Reading& operator=(const Reading& other);
    Frame& top() { return frames[depth - 1]; }
  };

  bool step(Reading& r, char c, std::vector<Reading>& forks) const;
  bool start_plain(Frame& f, char c, int depth) const;  // a value of a node without alternatives
  static bool same(const Reading& a, const Reading& b);
  void merge_readings();  // drops readings equal to another (an anyOf's readings rejoined)
  bool whitespace_allowed(Reading& r, char c) const;  // counts c if it is whitespace between tokens
  bool start_value(Reading& r, char c, std::vector<Reading>& forks) const;
  bool end_value(Reading& r) const;  // the top frame's value is whole: pop it
  bool push_child(Reading& r, int node) const;
  bool key_byte(Frame& f, char c) const;
  // One byte of a string's or key's text; `decoded` gets the byte it stands for (-1 for a
  // backslash or an unfinished escape; a \u escape leaves it -1 too).
  bool string_byte(Frame& f, char c, int* decoded = nullptr) const;
  bool literal_byte(Reading& r, char c, std::vector<Reading>& forks) const;
  bool number_byte(Reading& r, char c, std::vector<Reading>& forks) const;
  bool reading_complete(const Reading& r) const;

  const JsonSchema* schema_;
  Reading first_;
  std::vector<Reading> more_;  // further readings (anyOf), rarely any
  bool started_ = false;
  int max_indent_ = -1;  // -1: any whitespace
};

}  // namespace moex::infer
