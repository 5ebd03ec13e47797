#include "serve/jinja_lexer.h"

#include <utility>

#include "core/error.h"
#include "serve/jinja_unicode.h"

namespace moex::serve::jinja {

const char* token_type_name(TokenType type) {
  switch (type) {
    case TokenType::Text: return "text";
    case TokenType::NumericLiteral: return "number";
    case TokenType::StringLiteral: return "string";
    case TokenType::Identifier: return "identifier";
    case TokenType::Equals: return "'='";
    case TokenType::OpenParen: return "'('";
    case TokenType::CloseParen: return "')'";
    case TokenType::OpenStatement: return "'{%'";
    case TokenType::CloseStatement: return "'%}'";
    case TokenType::OpenExpression: return "'{{'";
    case TokenType::CloseExpression: return "'}}'";
    case TokenType::OpenSquareBracket: return "'['";
    case TokenType::CloseSquareBracket: return "']'";
    case TokenType::OpenCurlyBracket: return "'{'";
    case TokenType::CloseCurlyBracket: return "'}'";
    case TokenType::Comma: return "','";
    case TokenType::Dot: return "'.'";
    case TokenType::Colon: return "':'";
    case TokenType::Pipe: return "'|'";
    case TokenType::AdditiveBinaryOperator: return "additive operator";
    case TokenType::MultiplicativeBinaryOperator: return "multiplicative operator";
    case TokenType::ExponentiationBinaryOperator: return "'**'";
    case TokenType::ComparisonBinaryOperator: return "comparison operator";
    case TokenType::UnaryOperator: return "unary operator";
    case TokenType::Comment: return "comment";
  }
  return "token";
}

SourceLocator::SourceLocator(std::string source, std::string text)
    : source_(std::move(source)), text_(std::move(text)) {}

std::string SourceLocator::where(size_t offset) const {
  size_t line = 1, column = 1;
  for (size_t pos = 0; pos < offset && pos < text_.size();) {
    uint32_t cp = 0;
    pos += decode_utf8(text_, pos, cp);
    if (cp == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return source_ + ":" + std::to_string(line) + ":" + std::to_string(column);
}

namespace {

// The preprocessed text and, for each of its bytes, the offset of that byte in the original.
struct MappedText {
  std::string text;
  std::vector<size_t> origin;
  void push(char c, size_t from) {
    text += c;
    origin.push_back(from);
  }
};

// The same rewriting as @huggingface/jinja's preprocess(), applied in the same order:
// drop one trailing newline; lstrip_blocks; trim_blocks; remove {% generation %} tags.
MappedText preprocess(const std::string& source) {
  MappedText step;
  size_t length = source.size();
  if (length > 0 && source[length - 1] == '\n') --length;
  for (size_t i = 0; i < length; ++i) step.push(source[i], i);

  // lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1"
  MappedText lstripped;
  bool line_start = true;
  for (size_t pos = 0; pos < step.text.size();) {
    if (line_start) {
      size_t end = pos;
      while (end < step.text.size() && (step.text[end] == ' ' || step.text[end] == '\t')) ++end;
      if (end + 1 < step.text.size() && step.text[end] == '{' &&
          (step.text[end + 1] == '#' || step.text[end + 1] == '%' || step.text[end + 1] == '-')) {
        pos = end;  // drop the indentation before a tag
      }
    }
    uint32_t cp = 0;
    const size_t length = decode_utf8(step.text, pos, cp);
    for (size_t k = 0; k < length; ++k) lstripped.push(step.text[pos + k], step.origin[pos + k]);
    // JavaScript's multiline ^ also starts a line after \r, U+2028 and U+2029.
    line_start = cp == '\n' || cp == '\r' || cp == 0x2028 || cp == 0x2029;
    pos += length;
  }

  // trim_blocks: /([#%-]})\n/g -> "$1"
  MappedText trimmed;
  const std::string& t = lstripped.text;
  for (size_t pos = 0; pos < t.size();) {
    if (pos + 2 < t.size() && (t[pos] == '#' || t[pos] == '%' || t[pos] == '-') && t[pos + 1] == '}' &&
        t[pos + 2] == '\n') {
      trimmed.push(t[pos], lstripped.origin[pos]);
      trimmed.push(t[pos + 1], lstripped.origin[pos + 1]);
      pos += 3;
    } else {
      trimmed.push(t[pos], lstripped.origin[pos]);
      ++pos;
    }
  }

  // transformers' {% generation %} / {% endgeneration %} markers render as nothing; with '-' they
  // also take the whitespace on that side.
  MappedText out;
  const std::string& g = trimmed.text;
  for (size_t pos = 0; pos < g.size();) {
    if (g.compare(pos, 2, "{%") == 0) {
      size_t p = pos + 2;
      const bool strip_before = p < g.size() && g[p] == '-';
      if (strip_before) ++p;
      while (size_t n = js_whitespace_at(g, p)) p += n;
      if (g.compare(p, 3, "end") == 0 && g.compare(p + 3, 10, "generation") == 0) p += 3;
      if (g.compare(p, 10, "generation") == 0) {
        p += 10;
        while (size_t n = js_whitespace_at(g, p)) p += n;
        const bool strip_after = p < g.size() && g[p] == '-';
        if (strip_after) ++p;
        if (g.compare(p, 2, "%}") == 0) {
          p += 2;
          if (strip_before) {
            const size_t keep = js_trim_end_offset(out.text);
            out.text.resize(keep);
            out.origin.resize(keep);
          }
          if (strip_after) {
            while (size_t n = js_whitespace_at(g, p)) p += n;
          }
          pos = p;
          continue;
        }
      }
    }
    out.push(g[pos], trimmed.origin[pos]);
    ++pos;
  }
  out.origin.push_back(source.size());  // end of input
  return out;
}

bool is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }

struct Symbol {
  const char* text;
  TokenType type;
};

// Order matters: longer sequences before their prefixes.
constexpr Symbol kSymbols[] = {
    {"{%", TokenType::OpenStatement},
    {"%}", TokenType::CloseStatement},
    {"{{", TokenType::OpenExpression},
    {"}}", TokenType::CloseExpression},
    {"(", TokenType::OpenParen},
    {")", TokenType::CloseParen},
    {"{", TokenType::OpenCurlyBracket},
    {"}", TokenType::CloseCurlyBracket},
    {"[", TokenType::OpenSquareBracket},
    {"]", TokenType::CloseSquareBracket},
    {",", TokenType::Comma},
    {".", TokenType::Dot},
    {":", TokenType::Colon},
    {"|", TokenType::Pipe},
    {"<=", TokenType::ComparisonBinaryOperator},
    {">=", TokenType::ComparisonBinaryOperator},
    {"==", TokenType::ComparisonBinaryOperator},
    {"!=", TokenType::ComparisonBinaryOperator},
    {"<", TokenType::ComparisonBinaryOperator},
    {">", TokenType::ComparisonBinaryOperator},
    {"+", TokenType::AdditiveBinaryOperator},
    {"-", TokenType::AdditiveBinaryOperator},
    {"~", TokenType::AdditiveBinaryOperator},
    {"**", TokenType::ExponentiationBinaryOperator},
    {"*", TokenType::MultiplicativeBinaryOperator},
    {"//", TokenType::MultiplicativeBinaryOperator},
    {"/", TokenType::MultiplicativeBinaryOperator},
    {"%", TokenType::MultiplicativeBinaryOperator},
    {"=", TokenType::Equals},
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  Lexer(const MappedText& input, const SourceLocator& locator) : in_(input), src_(input.text), locator_(locator) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) step();
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& message) const {
    MOEX_THROW(locator_.where(in_.origin[std::min(pos, src_.size())]), ": syntax error: ", message);
  }

  void push(TokenType type, std::string value, size_t start) {
    tokens_.push_back(Token{type, std::move(value), in_.origin[start]});
  }

  bool last_is(TokenType type) const { return !tokens_.empty() && tokens_.back().type == type; }

  void strip_trailing_whitespace() {
    if (!last_is(TokenType::Text)) return;
    std::string& text = tokens_.back().value;
    text = js_trim_end(text);
    if (text.empty()) tokens_.pop_back();
  }

  void skip_whitespace() {
    while (size_t n = js_whitespace_at(src_, pos_)) pos_ += n;
  }

  // A quoted string's body, with the escapes @huggingface/jinja accepts.
  std::string read_string(char quote, size_t start) {
    std::string value;
    while (true) {
      if (pos_ >= src_.size()) fail(start, "unterminated string literal");
      const char c = src_[pos_];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++pos_;
        continue;
      }
      const size_t escape_at = pos_;
      ++pos_;
      if (pos_ >= src_.size()) fail(start, "unterminated string literal");
      const char e = src_[pos_++];
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\\': value += '\\'; break;
        case 'x':
        case 'u': {
          uint32_t cp = read_hex(e == 'x' ? 2 : 4, escape_at, e);
          // A \u high surrogate followed by a \u low surrogate is one astral code point.
          if (e == 'u' && cp >= 0xD800 && cp < 0xDC00 && src_.compare(pos_, 2, "\\u") == 0) {
            const size_t save = pos_;
            pos_ += 2;
            const uint32_t low = read_hex(4, save, 'u');
            if (low >= 0xDC00 && low < 0xE000) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              pos_ = save;
            }
          }
          append_utf8(value, cp);
          break;
        }
        default:
          fail(escape_at, std::string("unknown escape sequence '\\") + e + "' in string literal");
      }
    }
    ++pos_;  // closing quote
    return value;
  }

  uint32_t read_hex(int digits, size_t escape_at, char kind) {
    uint32_t cp = 0;
    for (int i = 0; i < digits; ++i) {
      const int h = pos_ < src_.size() ? hex_value(src_[pos_]) : -1;
      if (h < 0) fail(escape_at, std::string("invalid hexadecimal escape '\\") + kind + "' in string literal");
      cp = cp * 16 + static_cast<uint32_t>(h);
      ++pos_;
    }
    return cp;
  }

  std::string read_digits() {
    const size_t start = pos_;
    while (pos_ < src_.size() && is_digit(src_[pos_])) ++pos_;
    return src_.substr(start, pos_ - start);
  }

  void step() {
    // Text runs between tags.
    if (tokens_.empty() || last_is(TokenType::CloseStatement) || last_is(TokenType::CloseExpression) ||
        last_is(TokenType::Comment)) {
      const size_t start = pos_;
      while (pos_ < src_.size() &&
             !(src_[pos_] == '{' && pos_ + 1 < src_.size() &&
               (src_[pos_ + 1] == '%' || src_[pos_ + 1] == '{' || src_[pos_ + 1] == '#'))) {
        ++pos_;
      }
      if (pos_ > start) {
        push(TokenType::Text, src_.substr(start, pos_ - start), start);
        return;
      }
    }

    if (src_.compare(pos_, 2, "{#") == 0) {
      const size_t start = pos_;
      pos_ += 2;
      const bool strip_before = pos_ < src_.size() && src_[pos_] == '-';
      if (strip_before) ++pos_;
      const size_t end = src_.find("#}", pos_);
      if (end == std::string::npos) fail(start, "comment opened here is never closed with #}");
      std::string comment = src_.substr(pos_, end - pos_);
      const bool strip_after = !comment.empty() && comment.back() == '-';
      if (strip_after) comment.pop_back();
      if (strip_before) strip_trailing_whitespace();
      push(TokenType::Comment, comment, start);
      pos_ = end + 2;
      if (strip_after) skip_whitespace();
      return;
    }

    if (src_.compare(pos_, 3, "{%-") == 0 || src_.compare(pos_, 3, "{{-") == 0) {
      strip_trailing_whitespace();
      const bool statement = src_[pos_ + 1] == '%';
      push(statement ? TokenType::OpenStatement : TokenType::OpenExpression, statement ? "{%" : "{{", pos_);
      if (!statement) curly_depth_ = 0;
      pos_ += 3;
      return;
    }

    skip_whitespace();
    if (pos_ >= src_.size()) fail(pos_, "unexpected end of template inside a tag");

    if (src_.compare(pos_, 3, "-%}") == 0 || src_.compare(pos_, 3, "-}}") == 0) {
      const bool statement = src_[pos_ + 1] == '%';
      push(statement ? TokenType::CloseStatement : TokenType::CloseExpression, statement ? "%}" : "}}", pos_);
      pos_ += 3;
      skip_whitespace();
      return;
    }

    const size_t start = pos_;
    const char c = src_[pos_];
    if (c == '-' || c == '+') {
      if (tokens_.empty() || last_is(TokenType::Text)) fail(start, std::string("unexpected character '") + c + "'");
      const TokenType last = tokens_.back().type;
      const bool binary = last == TokenType::Identifier || last == TokenType::NumericLiteral ||
                          last == TokenType::StringLiteral || last == TokenType::CloseParen ||
                          last == TokenType::CloseSquareBracket;
      if (!binary) {
        ++pos_;
        std::string number = read_digits();
        if (!number.empty() && pos_ + 1 < src_.size() && src_[pos_] == '.' && is_digit(src_[pos_ + 1])) {
          ++pos_;
          number += "." + read_digits();
        }
        push(number.empty() ? TokenType::UnaryOperator : TokenType::NumericLiteral, std::string(1, c) + number,
             start);
        return;
      }
    }

    for (const Symbol& symbol : kSymbols) {
      const std::string text = symbol.text;
      if (text == "}}" && curly_depth_ > 0) continue;  // inside a dict literal
      if (src_.compare(pos_, text.size(), text) != 0) continue;
      push(symbol.type, text, start);
      if (symbol.type == TokenType::OpenExpression) curly_depth_ = 0;
      if (symbol.type == TokenType::OpenCurlyBracket) ++curly_depth_;
      if (symbol.type == TokenType::CloseCurlyBracket) --curly_depth_;
      pos_ += text.size();
      return;
    }

    if (c == '\'' || c == '"') {
      ++pos_;
      push(TokenType::StringLiteral, read_string(c, start), start);
      return;
    }
    if (is_digit(c)) {
      std::string number = read_digits();
      if (!last_is(TokenType::Dot) && pos_ + 1 < src_.size() && src_[pos_] == '.' && is_digit(src_[pos_ + 1])) {
        ++pos_;
        number += "." + read_digits();
      }
      push(TokenType::NumericLiteral, number, start);
      return;
    }
    if (is_word_char(c)) {
      while (pos_ < src_.size() && is_word_char(src_[pos_])) ++pos_;
      push(TokenType::Identifier, src_.substr(start, pos_ - start), start);
      return;
    }
    uint32_t cp = 0;
    const size_t n = decode_utf8(src_, pos_, cp);
    fail(start, "unexpected character '" + src_.substr(pos_, n) + "'");
  }

  const MappedText& in_;
  const std::string& src_;
  const SourceLocator& locator_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int curly_depth_ = 0;
};

}  // namespace

std::vector<Token> tokenize(const std::string& text, const SourceLocator& locator) {
  const MappedText input = preprocess(text);
  return Lexer(input, locator).run();
}

}  // namespace moex::serve::jinja
