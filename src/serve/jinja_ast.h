// Syntax tree of a parsed chat template. One node type with a kind tag keeps the parser and
// evaluator short; the fields each kind uses are listed below.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moex::serve::jinja {

enum class NodeKind {
  // Statements
  Text,      // text
  Comment,   //
  Output,    // lhs: the expression of {{ ... }}
  If,        // lhs: test; body; alternate (else / elif chain)
  For,       // lhs: loop target (Identifier or Tuple); rhs: iterable; extra: `if` filter or null;
             // body; alternate ({% else %} block)
  Set,       // lhs: target (Identifier, Tuple or Member); rhs: value, or null with body ({% set x %}...)
  Macro,     // text: name; items: parameters (Identifier or KeywordArgument); body
  Break,
  Continue,
  // Expressions
  IntegerLiteral,  // integer
  FloatLiteral,    // number
  StringLiteral,   // text
  ArrayLiteral,    // items
  TupleLiteral,    // items
  ObjectLiteral,   // items: key, value, key, value, ...
  Identifier,      // text
  Member,          // lhs: object; rhs: property; flag: computed (obj[...]) rather than obj.name
  Slice,           // items: start, stop, step (each may be null)
  Call,            // lhs: callee; items: arguments
  KeywordArgument, // text: name; lhs: value
  Unary,           // text: operator ("not", "-", "+"); lhs: operand
  Binary,          // text: operator; lhs, rhs
  Filter,          // text: filter name; lhs: operand; flag: called with (...); items: arguments
  Test,            // text: test name; lhs: operand; flag: negated (is not ...)
  Select,          // lhs: value; rhs: condition (`a if c` without else)
  Ternary,         // lhs: value if true; rhs: condition; extra: value if false
};

struct Node;
using NodePtr = std::unique_ptr<Node>;

struct Node {
  NodeKind kind;
  size_t offset = 0;  // in the original template text, for error messages
  std::string text;
  int64_t integer = 0;
  double number = 0;
  bool flag = false;
  NodePtr lhs, rhs, extra;
  std::vector<NodePtr> items;
  std::vector<NodePtr> body;
  std::vector<NodePtr> alternate;

  Node(NodeKind k, size_t at) : kind(k), offset(at) {}
};

struct Program {
  std::vector<NodePtr> body;
};

}  // namespace moex::serve::jinja
