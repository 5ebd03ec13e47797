// Tokenizer of chat templates, following @huggingface/jinja's lexer: the template is first
// preprocessed with trim_blocks and lstrip_blocks (as transformers renders chat templates), then
// split into text, tags and expression tokens. Every token keeps its offset in the original text
// so that errors can name line:column.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moex::serve::jinja {

enum class TokenType {
  Text,
  NumericLiteral,
  StringLiteral,
  Identifier,
  Equals,
  OpenParen,
  CloseParen,
  OpenStatement,   // {%
  CloseStatement,  // %}
  OpenExpression,  // {{
  CloseExpression, // }}
  OpenSquareBracket,
  CloseSquareBracket,
  OpenCurlyBracket,
  CloseCurlyBracket,
  Comma,
  Dot,
  Colon,
  Pipe,
  AdditiveBinaryOperator,        // + - ~
  MultiplicativeBinaryOperator,  // * / // %
  ExponentiationBinaryOperator,  // **
  ComparisonBinaryOperator,      // < > <= >= == !=
  UnaryOperator,                 // + - before an operand
  Comment,
};

const char* token_type_name(TokenType type);

struct Token {
  TokenType type;
  std::string value;
  size_t offset;  // byte offset of the token's start in the original template text
};

// Names a position of the original text as "<source>:<line>:<column>" (1-based, columns in
// code points).
class SourceLocator {
 public:
  SourceLocator(std::string source, std::string text);
  std::string where(size_t offset) const;
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::string text_;
};

// Throws moex::Error "<source>:<line>:<column>: <message>" for malformed templates.
std::vector<Token> tokenize(const std::string& text, const SourceLocator& locator);

}  // namespace moex::serve::jinja
