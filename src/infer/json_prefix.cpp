#include "infer/json_prefix.h"

#include <algorithm>
#include <string_view>

#include "core/error.h"

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
uint64_t bit(int i) {
  return uint64_t{1} << i;
}
// The bits of the first n members.
uint64_t first_bits(size_t n) {
  return n >= 64 ? ~uint64_t{0} : bit(static_cast<int>(n)) - 1;
}
constexpr std::string_view kWords[] = {"true", "false", "null"};
constexpr uint8_t kEscape = 1;  // Frame::lex after '\'; kEscape + n: n hex digits of \u due

}  // namespace

JsonPrefix::Reading& JsonPrefix::Reading::operator=(const Reading& other) {
  depth = other.depth;
  whitespace = other.whitespace;
  newline = other.newline;
  std::copy(other.frames, other.frames + other.depth, frames);
  return *this;
}

JsonPrefix::JsonPrefix(bool object_only)
    : JsonPrefix(object_only ? *JsonSchema::any_object() : *JsonSchema::any()) {}

JsonPrefix::JsonPrefix(const JsonSchema& schema) : schema_(&schema) {
  first_.depth = 1;
  first_.frames[0] = Frame{};
  first_.frames[0].node = schema_->root();
  first_.frames[0].phase = Phase::kValue;
}

bool JsonPrefix::feed(std::string_view bytes) {
  for (char c : bytes)
    if (!feed(c)) return false;
  return true;
}

bool JsonPrefix::whitespace_allowed(Reading& r, char c) const {
  const Phase phase = r.top().phase;
  const bool inside_text = phase == Phase::kString || phase == Phase::kKey ||
                           phase == Phase::kLiteral || phase == Phase::kWord;
  if (inside_text || !is_space(c)) {
    r.whitespace = 0;
    return true;
  }
  if (max_indent_ < 0) return true;
  if (r.whitespace++ == 0) {
    r.newline = c == '\n';
    return c == ' ' || c == '\n';
  }
  return r.newline && c == ' ' && r.whitespace <= 1 + max_indent_;
}

bool JsonPrefix::feed(char c) {
  std::vector<Reading> forks;  // allocates only when an anyOf forks
  const bool first_alive = whitespace_allowed(first_, c) && step(first_, c, forks);
  if (more_.empty() && forks.empty()) {  // one reading: the common case
    if (first_alive && !is_space(c)) started_ = true;
    return first_alive;
  }
  size_t kept = 0;
  for (size_t i = 0; i < more_.size(); ++i) {
    if (!whitespace_allowed(more_[i], c) || !step(more_[i], c, forks)) continue;
    if (kept != i) more_[kept] = more_[i];
    ++kept;
  }
  more_.resize(kept);
  more_.insert(more_.end(), forks.begin(), forks.end());
  if (!first_alive) {
    if (more_.empty()) return false;
    first_ = more_.back();
    more_.pop_back();
  }
  merge_readings();
  if (1 + more_.size() > static_cast<size_t>(kMaxReadings)) return false;
  if (!is_space(c)) started_ = true;
  return true;
}

bool JsonPrefix::same(const Reading& a, const Reading& b) {
  if (a.depth != b.depth || a.whitespace != b.whitespace || a.newline != b.newline) return false;
  for (int i = 0; i < a.depth; ++i) {
    const Frame &x = a.frames[i], &y = b.frames[i];
    if (x.node != y.node || x.phase != y.phase || x.lex != y.lex || x.pos != y.pos ||
        x.count != y.count || x.key != y.key || x.seen != y.seen || x.cand != y.cand ||
        x.hex != y.hex || x.low_due != y.low_due || x.utf8_left != y.utf8_left ||
        x.utf8_lead != y.utf8_lead)
      return false;
  }
  return true;
}

void JsonPrefix::merge_readings() {
  size_t kept = 0;
  for (size_t i = 0; i < more_.size(); ++i) {
    bool repeat = same(more_[i], first_);
    for (size_t j = 0; j < kept && !repeat; ++j) repeat = same(more_[i], more_[j]);
    if (repeat) continue;
    if (kept != i) more_[kept] = more_[i];
    ++kept;
  }
  more_.resize(kept);
}

bool JsonPrefix::complete() const {
  if (reading_complete(first_)) return true;
  return std::any_of(more_.begin(), more_.end(),
                     [this](const Reading& r) { return reading_complete(r); });
}

bool JsonPrefix::reading_complete(const Reading& r) const {
  if (r.depth != 1) return false;
  const Frame& f = r.frames[0];
  switch (f.phase) {
    case Phase::kDone:
    case Phase::kZero:
    case Phase::kInteger:
    case Phase::kFraction:
    case Phase::kExponentDigits:
      return true;
    case Phase::kLiteral:
    case Phase::kWord: {
      const JsonSchema::Node& n = schema_->node(f.node);
      for (int i = 0; i < JsonSchema::kMaxMembers; ++i) {
        if (!(f.cand & bit(i))) continue;
        const std::string_view text =
            f.phase == Phase::kWord ? kWords[i] : std::string_view(n.literals[i]);
        if (text.size() == f.pos) return true;
      }
      return false;
    }
    default:
      return false;
  }
}

bool JsonPrefix::push_child(Reading& r, int node) const {
  if (r.depth > kMaxDepth) return false;
  Frame& child = r.frames[r.depth++];
  child = Frame{};
  child.node = node;
  child.phase = Phase::kValue;
  return true;
}

bool JsonPrefix::end_value(Reading& r) const {
  if (r.depth == 1) {
    r.frames[0].phase = Phase::kDone;
    return true;
  }
  --r.depth;
  Frame& parent = r.top();
  if (parent.phase == Phase::kObjectValue) {
    if (parent.key >= 0) parent.seen |= bit(parent.key);
    parent.phase = Phase::kObjectAfter;
  } else {
    parent.phase = Phase::kArrayAfter;
  }
  return true;
}

bool JsonPrefix::start_value(Reading& r, char c, std::vector<Reading>& forks) const {
  if (is_space(c)) return true;
  Frame& f = r.top();
  // anyOf and $ref: each further plain schema the value may match is tried on a copy of this
  // reading (JsonSchema flattened them, at most kMaxMembers).
  const JsonSchema::Node& n = schema_->node(f.node);
  if (!n.alternatives.empty()) {
    if (n.leaves.empty()) return false;
    for (size_t i = 1; i < n.leaves.size(); ++i) {
      Reading copy = r;
      copy.top().node = n.leaves[i];
      if (start_plain(copy.top(), c, copy.depth)) forks.push_back(copy);
    }
    f.node = n.leaves[0];
  }
  return start_plain(f, c, r.depth);
}

bool JsonPrefix::start_plain(Frame& f, char c, int depth) const {
  const JsonSchema::Node& n = schema_->node(f.node);
  if (!n.literals.empty()) {
    uint64_t cand = 0;
    for (size_t i = 0; i < n.literals.size(); ++i)
      if (n.literals[i][0] == c) cand |= bit(static_cast<int>(i));
    if (cand == 0) return false;
    f.phase = Phase::kLiteral;
    f.cand = cand;
    f.pos = 1;
    return true;
  }
  auto allows = [&](uint8_t kinds) { return (n.kinds & kinds) != 0; };
  switch (c) {
    case '{':
      if (!allows(JsonSchema::kObject) || depth > kMaxDepth) return false;
      f.phase = Phase::kObjectFirst;
      f.seen = 0;
      f.key = -1;
      return true;
    case '[':
      if (!allows(JsonSchema::kArray) || depth > kMaxDepth) return false;
      f.phase = Phase::kArrayFirst;
      f.count = 0;
      return true;
    case '"':
      if (!allows(JsonSchema::kString)) return false;
      f.phase = Phase::kString;
      f.count = 0;
      f.lex = 0;
      f.low_due = false;
      f.utf8_left = 0;
      return true;
    case 't':
    case 'f':
    case 'n':
      if (!allows(c == 'n' ? JsonSchema::kNull : JsonSchema::kBoolean)) return false;
      f.phase = Phase::kWord;
      f.cand = bit(c == 't' ? 0 : c == 'f' ? 1 : 2);
      f.pos = 1;
      return true;
    default:
      if (!allows(JsonSchema::kNumber | JsonSchema::kInteger)) return false;
      if (c == '-') {
        f.phase = Phase::kMinus;
        return true;
      }
      if (!is_digit(c)) return false;
      f.phase = c == '0' ? Phase::kZero : Phase::kInteger;
      return true;
  }
}

bool JsonPrefix::string_byte(Frame& f, char c, int* decoded) const {
  const auto u = static_cast<unsigned char>(c);
  if (decoded) *decoded = -1;
  if (f.lex == kEscape) {
    if (c == 'u') {
      f.lex = kEscape + 4;
      f.hex = 0;
      return true;
    }
    if (f.low_due) return false;  // a high surrogate needs its low half
    f.lex = 0;
    static constexpr char kEscaped[] = "\"\\/bfnrt", kMeant[] = "\"\\/\b\f\n\r\t";
    for (int i = 0; kEscaped[i] != '\0'; ++i) {
      if (c != kEscaped[i]) continue;
      if (decoded) *decoded = static_cast<unsigned char>(kMeant[i]);
      return true;
    }
    return false;
  }
  if (f.lex > kEscape) {
    if (!is_hex(c)) return false;
    const int digit = is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10;
    f.hex = static_cast<uint16_t>(f.hex * 16 + digit);
    const int left = f.lex - kEscape - 1;  // digits still due after this one
    if (left == 3 && f.low_due && digit != 0xD) return false;  // only D can begin a low half
    // Surrogates pair up: a high half (D800-DBFF) must be followed by a low one (DC00-DFFF), and
    // a low one comes only after a high one. The first two digits tell which.
    if (left == 2 && f.hex >= 0xD8 && f.hex <= 0xDF) {
      if (f.low_due != (f.hex >= 0xDC)) return false;
    } else if (left == 2 && f.low_due) {
      return false;
    }
    if (left > 0) {
      --f.lex;
      return true;
    }
    f.lex = 0;
    f.low_due = f.hex >= 0xD800 && f.hex <= 0xDBFF;
    return true;
  }
  if (u < 0x20) return false;  // control characters must be escaped
  if (f.low_due && c != '\\') return false;
  // UTF-8: a lead byte announces its continuation bytes, whose range RFC 3629 fixes (no
  // overlong forms, no surrogates, nothing past U+10FFFF).
  if (f.utf8_left > 0) {
    uint8_t lo = 0x80, hi = 0xBF;
    if (f.utf8_lead != 0) {  // the sequence's second byte
      if (f.utf8_lead == 0xE0) lo = 0xA0;
      if (f.utf8_lead == 0xED) hi = 0x9F;
      if (f.utf8_lead == 0xF0) lo = 0x90;
      if (f.utf8_lead == 0xF4) hi = 0x8F;
      f.utf8_lead = 0;
    }
    if (u < lo || u > hi) return false;
    --f.utf8_left;
    return true;
  }
  if (u >= 0x80) {
    if (u < 0xC2 || u > 0xF4) return false;  // a stray continuation byte or no lead byte
    f.utf8_left = u < 0xE0 ? 1 : u < 0xF0 ? 2 : 3;
    f.utf8_lead = static_cast<uint8_t>(u);
  }
  if (c == '\\') f.lex = kEscape;
  // A character begins at any byte but a UTF-8 continuation byte or the backslash of a
  // surrogate pair's low half (an escape counts once, a pair once).
  if ((u & 0xC0) != 0x80 && !f.low_due && f.count < INT32_MAX) ++f.count;
  if (decoded && c != '\\') *decoded = u;
  return true;
}

bool JsonPrefix::key_byte(Frame& f, char c) const {
  const JsonSchema::Node& n = schema_->node(f.node);
  if (f.lex == 0 && f.utf8_left == 0 && c == '"') {
    if (f.low_due) return false;
    int exact = -1;
    for (size_t i = 0; i < n.property_names.size(); ++i)
      if ((f.cand & bit(static_cast<int>(i))) && n.property_names[i].size() == f.pos)
        exact = static_cast<int>(i);
    if (exact >= 0) {
      if (f.seen & bit(exact)) return false;  // a key given twice
      f.key = exact;
    } else {
      if (n.additional < 0) return false;
      f.key = -1;
    }
    f.phase = Phase::kColon;
    return true;
  }
  // Without other keys, a backslash only where an escape can write a declared name's next byte.
  if (c == '\\' && f.lex == 0 && n.additional < 0) {
    bool escapable = false;
    for (size_t i = 0; i < n.property_names.size() && !escapable; ++i) {
      const std::string& name = n.property_names[i];
      escapable = (f.cand & bit(static_cast<int>(i))) && f.pos < name.size() &&
                  std::string_view("\"\\/\b\f\n\r\t").find(name[f.pos]) != std::string_view::npos;
    }
    if (!escapable) return false;
  }
  int decoded = -1;
  if (!string_byte(f, c, &decoded)) return false;
  // Keys are matched to the declared names on the bytes they stand for. A \u escape is refused
  // where names are declared (the character itself can be written), so that no key spells a
  // declared name another way.
  if (f.lex == kEscape + 4 && !n.property_names.empty()) return false;
  if (decoded < 0) return true;  // a backslash or an unfinished escape: nothing to match yet
  uint64_t next = 0;
  for (size_t i = 0; i < n.property_names.size(); ++i) {
    const std::string& name = n.property_names[i];
    if ((f.cand & bit(static_cast<int>(i))) && f.pos < name.size() &&
        static_cast<unsigned char>(name[f.pos]) == decoded)
      next |= bit(static_cast<int>(i));
  }
  f.cand = next;
  if (f.pos == UINT16_MAX)
    f.cand = 0;  // longer than any name
  else
    ++f.pos;
  return f.cand != 0 || n.additional >= 0;
}

bool JsonPrefix::literal_byte(Reading& r, char c, std::vector<Reading>& forks) const {
  Frame& f = r.top();
  const JsonSchema::Node& n = schema_->node(f.node);
  uint64_t next = 0;
  bool whole = false;  // a candidate ends here
  for (int i = 0; i < JsonSchema::kMaxMembers; ++i) {
    if (!(f.cand & bit(i))) continue;
    const std::string_view text =
        f.phase == Phase::kWord ? kWords[i] : std::string_view(n.literals[i]);
    if (text.size() == f.pos)
      whole = true;
    else if (text[f.pos] == c)
      next |= bit(i);
  }
  if (next != 0) {
    f.cand = next;
    ++f.pos;
    return true;
  }
  // The byte follows the finished value.
  return whole && end_value(r) && step(r, c, forks);
}

bool JsonPrefix::number_byte(Reading& r, char c, std::vector<Reading>& forks) const {
  Frame& f = r.top();
  const bool integer_only = !(schema_->node(f.node).kinds & JsonSchema::kNumber);
  auto ends = [&] { return end_value(r) && step(r, c, forks); };
  switch (f.phase) {
    case Phase::kMinus:
      if (!is_digit(c)) return false;
      f.phase = c == '0' ? Phase::kZero : Phase::kInteger;
      return true;
    case Phase::kZero:
    case Phase::kInteger:
      if (is_digit(c) && f.phase == Phase::kInteger) return true;
      if (c == '.' && !integer_only) {
        f.phase = Phase::kDot;
        return true;
      }
      if ((c == 'e' || c == 'E') && !integer_only) {
        f.phase = Phase::kExponent;
        return true;
      }
      return ends();
    case Phase::kDot:
      if (!is_digit(c)) return false;
      f.phase = Phase::kFraction;
      return true;
    case Phase::kFraction:
      if (is_digit(c)) return true;
      if (c == 'e' || c == 'E') {
        f.phase = Phase::kExponent;
        return true;
      }
      return ends();
    case Phase::kExponent:
      if (c == '+' || c == '-') {
        f.phase = Phase::kExponentSign;
        return true;
      }
      [[fallthrough]];
    case Phase::kExponentSign:
      if (!is_digit(c)) return false;
      f.phase = Phase::kExponentDigits;
      return true;
    case Phase::kExponentDigits:
      if (is_digit(c)) return true;
      return ends();
    default:
      return false;
  }
}

bool JsonPrefix::step(Reading& r, char c, std::vector<Reading>& forks) const {
  Frame& f = r.top();
  const JsonSchema::Node& n = schema_->node(f.node);
  switch (f.phase) {
    case Phase::kValue:
      return start_value(r, c, forks);
    case Phase::kObjectFirst:
    case Phase::kObjectKey: {
      if (is_space(c)) return true;
      if (c == '}' && f.phase == Phase::kObjectFirst) return n.required == 0 && end_value(r);
      if (c != '"') return false;
      // Declared names still to come; with other keys allowed, every name (a repeat is caught
      // when the key ends).
      const uint64_t declared = first_bits(n.property_names.size());
      f.cand = n.additional >= 0 ? declared : declared & ~f.seen;
      if (f.cand == 0 && n.additional < 0) return false;
      f.pos = 0;
      f.lex = 0;
      f.low_due = false;
      f.utf8_left = 0;
      f.phase = Phase::kKey;
      return true;
    }
    case Phase::kKey:
      return key_byte(f, c);
    case Phase::kColon:
      if (is_space(c)) return true;
      if (c != ':') return false;
      f.phase = Phase::kObjectValue;
      return push_child(r,
                        f.key >= 0 ? n.property_nodes[static_cast<size_t>(f.key)] : n.additional);
    case Phase::kObjectAfter:
      if (is_space(c)) return true;
      if (c == ',') {
        // Only when another key may follow.
        if (n.additional < 0 && f.seen == first_bits(n.property_names.size())) return false;
        f.phase = Phase::kObjectKey;
        return true;
      }
      if (c == '}') return (f.seen & n.required) == n.required && end_value(r);
      return false;
    case Phase::kArrayFirst:
      if (c == ']') return n.min_items == 0 && end_value(r);
      [[fallthrough]];
    case Phase::kArrayNext:
      if (is_space(c)) return true;
      if (n.max_items >= 0 && f.count >= n.max_items) return false;
      ++f.count;
      f.phase = Phase::kArrayValue;
      return push_child(r, n.items) && start_value(r, c, forks);
    case Phase::kArrayAfter:
      if (is_space(c)) return true;
      if (c == ',') {
        if (n.max_items >= 0 && f.count >= n.max_items) return false;
        f.phase = Phase::kArrayNext;
        return true;
      }
      if (c == ']') return f.count >= n.min_items && end_value(r);
      return false;
    case Phase::kString:
      if (f.lex == 0 && f.utf8_left == 0 && c == '"')
        return !f.low_due && f.count >= n.min_length && end_value(r);
      return string_byte(f, c) && (n.max_length < 0 || f.count <= n.max_length);
    case Phase::kLiteral:
    case Phase::kWord:
      return literal_byte(r, c, forks);
    case Phase::kObjectValue:
    case Phase::kArrayValue:
      return false;  // the frame above is the one being written
    case Phase::kDone:
      return is_space(c);
    default:
      return number_byte(r, c, forks);
  }
}

}  // namespace moex::infer
