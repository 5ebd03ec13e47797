#include "serve/jinja_parser.h"

#include <cstdlib>
#include <initializer_list>
#include <set>
#include <utility>

#include "core/error.h"

namespace moex::serve::jinja {
namespace {

class Parser {
 public:
  Parser(const std::vector<Token>& tokens, const SourceLocator& locator, size_t text_size)
      : tokens_(tokens), locator_(locator), end_offset_(text_size) {}

  Program run() {
    Program program;
    while (current_ < tokens_.size()) program.body.push_back(parse_any());
    return program;
  }

 private:
  // ---- token access ----
  const Token* peek(size_t ahead = 0) const {
    return current_ + ahead < tokens_.size() ? &tokens_[current_ + ahead] : nullptr;
  }
  size_t here() const { return current_ < tokens_.size() ? tokens_[current_].offset : end_offset_; }

  [[noreturn]] void fail_at(size_t offset, const std::string& message) const {
    MOEX_THROW(locator_.where(offset), ": syntax error: ", message);
  }
  [[noreturn]] void fail(const std::string& message) const {
    const Token* t = peek();
    if (t == nullptr) fail_at(end_offset_, message + ", but the template ended");
    fail_at(t->offset, message + ", found " + describe(*t));
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::Identifier: return "'" + t.value + "'";
      case TokenType::Text: return "text";
      case TokenType::StringLiteral: return "a string";
      case TokenType::NumericLiteral: return "number " + t.value;
      default: return "'" + t.value + "'";
    }
  }

  bool is(TokenType type) const { return peek() != nullptr && peek()->type == type; }
  bool is(TokenType a, TokenType b) const {
    return is(a) && peek(1) != nullptr && peek(1)->type == b;
  }
  bool is_identifier(const char* name, size_t ahead = 0) const {
    const Token* t = peek(ahead);
    return t != nullptr && t->type == TokenType::Identifier && t->value == name;
  }
  bool is_statement(std::initializer_list<const char*> names) const {
    if (!is(TokenType::OpenStatement)) return false;
    for (const char* name : names) {
      if (is_identifier(name, 1)) return true;
    }
    return false;
  }
  const Token& expect(TokenType type, const std::string& what) {
    if (!is(type)) fail("expected " + what);
    return tokens_[current_++];
  }
  void expect_identifier(const char* name) {
    if (!is_identifier(name)) fail(std::string("expected '") + name + "'");
    ++current_;
  }
  // The closing {% end... %} of a block opened at `opened`.
  void expect_end(const char* end_name, const char* block, size_t opened) {
    if (peek() == nullptr) {
      fail_at(opened, std::string("{% ") + block + " %} is never closed with {% " + end_name + " %}");
    }
    expect(TokenType::OpenStatement, std::string("{% ") + end_name + " %}");
    expect_identifier(end_name);
    expect(TokenType::CloseStatement, "'%}'");
  }
  // Statements up to one of `stops`; an unclosed block names where it was opened.
  std::vector<NodePtr> parse_until(std::initializer_list<const char*> stops, const char* block, size_t opened) {
    std::vector<NodePtr> body;
    while (!is_statement(stops)) {
      if (peek() == nullptr) {
        fail_at(opened, std::string("{% ") + block + " %} is never closed with {% end" + block + " %}");
      }
      body.push_back(parse_any());
    }
    return body;
  }

  static NodePtr make(NodeKind kind, size_t offset) { return std::make_unique<Node>(kind, offset); }

  // The nesting the parser recurses through (blocks, expressions, unary operators) is bounded, so
  // a hostile template is a syntax error, not a stack overflow.
  static constexpr int kMaxDepth = 200;
  struct Nest {
    explicit Nest(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxDepth)
        p.fail("blocks or expressions nested more than " + std::to_string(kMaxDepth) + " deep");
    }
    ~Nest() { --p.depth_; }
    Parser& p;
  };

  // ---- statements ----
  NodePtr parse_any() {
    const Nest nest(*this);
    const Token& t = tokens_[current_];
    switch (t.type) {
      case TokenType::Comment: {
        ++current_;
        return make(NodeKind::Comment, t.offset);
      }
      case TokenType::Text: {
        auto node = make(NodeKind::Text, t.offset);
        node->text = t.value;
        ++current_;
        return node;
      }
      case TokenType::OpenStatement:
        return parse_statement();
      case TokenType::OpenExpression: {
        auto node = make(NodeKind::Output, t.offset);
        ++current_;
        node->lhs = parse_expression();
        expect(TokenType::CloseExpression, "'}}'");
        return node;
      }
      default:
        fail("unexpected token");
    }
  }

  NodePtr parse_statement() {
    const size_t opened = here();
    expect(TokenType::OpenStatement, "'{%'");
    if (!is(TokenType::Identifier)) fail("expected a statement name after '{%'");
    const std::string name = peek()->value;
    ++current_;
    if (name == "set") return parse_set(opened);
    if (name == "if") {
      NodePtr node = parse_if(opened);
      expect_end("endif", "if", opened);
      return node;
    }
    if (name == "for") {
      NodePtr node = parse_for(opened);
      expect_end("endfor", "for", opened);
      return node;
    }
    if (name == "macro") {
      NodePtr node = parse_macro(opened);
      expect_end("endmacro", "macro", opened);
      return node;
    }
    if (name == "break" || name == "continue") {
      expect(TokenType::CloseStatement, "'%}'");
      return make(name == "break" ? NodeKind::Break : NodeKind::Continue, opened);
    }
    if (name.compare(0, 3, "end") == 0 || name == "else" || name == "elif") {
      fail_at(opened, "{% " + name + " %} without an open block it could close");
    }
    fail_at(opened, "unknown or unsupported statement '" + name + "'");
  }

  NodePtr parse_set(size_t opened) {
    auto node = make(NodeKind::Set, opened);
    node->lhs = parse_expression_sequence(false);
    if (is(TokenType::Equals)) {
      ++current_;
      node->rhs = parse_expression_sequence(false);
    } else {
      expect(TokenType::CloseStatement, "'=' or '%}'");
      node->body = parse_until({"endset"}, "set", opened);
      expect(TokenType::OpenStatement, "'{%'");
      expect_identifier("endset");
    }
    expect(TokenType::CloseStatement, "'%}'");
    return node;
  }

  NodePtr parse_if(size_t opened) {
    auto node = make(NodeKind::If, opened);
    node->lhs = parse_expression();
    expect(TokenType::CloseStatement, "'%}'");
    node->body = parse_until({"elif", "else", "endif"}, "if", opened);
    if (is_statement({"elif"})) {
      const size_t elif_at = here();
      current_ += 2;
      node->alternate.push_back(parse_if(elif_at));
    } else if (is_statement({"else"})) {
      current_ += 2;
      expect(TokenType::CloseStatement, "'%}'");
      node->alternate = parse_until({"endif"}, "if", opened);
    }
    return node;
  }

  NodePtr parse_for(size_t opened) {
    auto node = make(NodeKind::For, opened);
    node->lhs = parse_expression_sequence(true);
    if (node->lhs->kind != NodeKind::Identifier && node->lhs->kind != NodeKind::TupleLiteral) {
      fail_at(node->lhs->offset, "expected a loop variable name");
    }
    if (!is_identifier("in")) fail("expected 'in' after the loop variable");
    ++current_;
    NodePtr iterable = parse_expression();
    if (iterable->kind == NodeKind::Select) {  // {% for x in xs if cond %}
      node->rhs = std::move(iterable->lhs);
      node->extra = std::move(iterable->rhs);
    } else {
      node->rhs = std::move(iterable);
    }
    expect(TokenType::CloseStatement, "'%}'");
    node->body = parse_until({"endfor", "else"}, "for", opened);
    if (is_statement({"else"})) {
      current_ += 2;
      expect(TokenType::CloseStatement, "'%}'");
      node->alternate = parse_until({"endfor"}, "for", opened);
    }
    return node;
  }

  NodePtr parse_macro(size_t opened) {
    auto node = make(NodeKind::Macro, opened);
    if (!is(TokenType::Identifier)) fail("expected the macro's name");
    node->text = tokens_[current_++].value;
    node->items = parse_arguments(true);
    expect(TokenType::CloseStatement, "'%}'");
    node->body = parse_until({"endmacro"}, "macro", opened);
    return node;
  }

  // ---- expressions ----
  NodePtr parse_expression_sequence(bool primary) {
    const size_t start = here();
    std::vector<NodePtr> items;
    items.push_back(primary ? parse_primary() : parse_expression());
    if (!is(TokenType::Comma)) return std::move(items[0]);
    while (is(TokenType::Comma)) {
      ++current_;
      items.push_back(primary ? parse_primary() : parse_expression());
    }
    auto tuple = make(NodeKind::TupleLiteral, start);
    tuple->items = std::move(items);
    return tuple;
  }

  NodePtr parse_expression() {
    const Nest nest(*this);
    return parse_if_expression();
  }

  NodePtr parse_if_expression() {
    NodePtr value = parse_or();
    if (!is_identifier("if")) return value;
    const size_t at = here();
    ++current_;
    NodePtr test = parse_or();
    if (is_identifier("else")) {
      ++current_;
      auto node = make(NodeKind::Ternary, at);
      node->lhs = std::move(value);
      node->rhs = std::move(test);
      node->extra = parse_if_expression();
      return node;
    }
    auto node = make(NodeKind::Select, at);
    node->lhs = std::move(value);
    node->rhs = std::move(test);
    return node;
  }

  NodePtr binary(const Token& op, std::string name, NodePtr lhs, NodePtr rhs) {
    auto node = make(NodeKind::Binary, op.offset);
    node->text = std::move(name);
    node->lhs = std::move(lhs);
    node->rhs = std::move(rhs);
    return node;
  }

  NodePtr parse_or() {
    NodePtr left = parse_and();
    while (is_identifier("or")) {
      const Token& op = tokens_[current_++];
      left = binary(op, "or", std::move(left), parse_and());
    }
    return left;
  }

  NodePtr parse_and() {
    NodePtr left = parse_not();
    while (is_identifier("and")) {
      const Token& op = tokens_[current_++];
      left = binary(op, "and", std::move(left), parse_not());
    }
    return left;
  }

  NodePtr parse_not() {
    const Nest nest(*this);
    if (is_identifier("not")) {
      auto node = make(NodeKind::Unary, here());
      node->text = "not";
      ++current_;
      node->lhs = parse_not();
      return node;
    }
    return parse_comparison();
  }

  NodePtr parse_comparison() {
    NodePtr left = parse_additive();
    while (true) {
      std::string op;
      const Token* token = peek();
      if (is_identifier("not") && is_identifier("in", 1)) {
        op = "not in";
        current_ += 2;
      } else if (is_identifier("in")) {
        op = "in";
        ++current_;
      } else if (is(TokenType::ComparisonBinaryOperator)) {
        op = peek()->value;
        ++current_;
      } else {
        break;
      }
      left = binary(*token, op, std::move(left), parse_additive());
    }
    return left;
  }

  NodePtr parse_additive() {
    NodePtr left = parse_multiplicative();
    while (is(TokenType::AdditiveBinaryOperator)) {
      const Token& op = tokens_[current_++];
      left = binary(op, op.value, std::move(left), parse_multiplicative());
    }
    return left;
  }

  NodePtr parse_multiplicative() {
    NodePtr left = parse_power();
    while (is(TokenType::MultiplicativeBinaryOperator)) {
      const Token& op = tokens_[current_++];
      left = binary(op, op.value, std::move(left), parse_power());
    }
    return left;
  }

  NodePtr parse_power() {
    NodePtr left = parse_test();
    while (is(TokenType::ExponentiationBinaryOperator)) {
      const Token& op = tokens_[current_++];
      left = binary(op, "**", std::move(left), parse_test());
    }
    return left;
  }

  NodePtr parse_test() {
    NodePtr operand = parse_filter();
    while (is_identifier("is")) {
      const size_t at = here();
      ++current_;
      const bool negate = is_identifier("not");
      if (negate) ++current_;
      // `none`, `true` and `false` are identifiers here, as in Jinja.
      if (!is(TokenType::Identifier)) fail("expected a test name after 'is'");
      auto node = make(NodeKind::Test, at);
      node->text = tokens_[current_++].value;
      node->flag = negate;
      node->lhs = std::move(operand);
      operand = std::move(node);
    }
    return operand;
  }

  NodePtr parse_filter() {
    NodePtr operand = parse_unary_sign();
    while (is(TokenType::Pipe)) {
      ++current_;
      if (!is(TokenType::Identifier)) fail("expected a filter name after '|'");
      auto node = make(NodeKind::Filter, here());
      node->text = tokens_[current_++].value;
      node->lhs = std::move(operand);
      if (is(TokenType::OpenParen)) {
        node->flag = true;
        node->items = parse_arguments(false);
      }
      operand = std::move(node);
    }
    return operand;
  }

  NodePtr parse_unary_sign() {
    const Nest nest(*this);
    const Token* t = peek();
    if (t != nullptr && (t->type == TokenType::UnaryOperator || t->type == TokenType::AdditiveBinaryOperator) &&
        (t->value == "-" || t->value == "+")) {
      auto node = make(NodeKind::Unary, t->offset);
      node->text = t->value;
      ++current_;
      node->lhs = parse_unary_sign();
      return node;
    }
    return parse_call_member();
  }

  NodePtr parse_call_member() {
    NodePtr member = parse_member(parse_primary());
    if (is(TokenType::OpenParen)) return parse_call(std::move(member));
    return member;
  }

  NodePtr parse_call(NodePtr callee) {
    auto node = make(NodeKind::Call, callee->offset);
    node->lhs = std::move(callee);
    node->items = parse_arguments(false);
    NodePtr expression = parse_member(std::move(node));
    if (is(TokenType::OpenParen)) return parse_call(std::move(expression));
    return expression;
  }

  // (a, b, key=value); for macro parameters only names and name=default.
  std::vector<NodePtr> parse_arguments(bool parameters) {
    expect(TokenType::OpenParen, "'('");
    std::vector<NodePtr> args;
    std::set<std::string> names;
    bool saw_keyword = false;
    while (!is(TokenType::CloseParen)) {
      if (peek() == nullptr) fail("expected ')'");
      if (is(TokenType::ExponentiationBinaryOperator) ||
          (is(TokenType::MultiplicativeBinaryOperator) && peek()->value == "*")) {
        fail("argument unpacking (* and **) is not supported");
      }
      NodePtr argument = parse_expression();
      if (is(TokenType::Equals)) {
        ++current_;
        if (argument->kind != NodeKind::Identifier) {
          fail_at(argument->offset, parameters ? "expected a parameter name" : "expected a keyword argument name");
        }
        auto keyword = make(NodeKind::KeywordArgument, argument->offset);
        keyword->text = argument->text;
        keyword->lhs = parse_expression();
        argument = std::move(keyword);
      }
      if (parameters) {
        if (argument->kind != NodeKind::Identifier && argument->kind != NodeKind::KeywordArgument) {
          fail_at(argument->offset, "expected a parameter name");
        }
        if (!names.insert(argument->text).second) {
          fail_at(argument->offset, "duplicate parameter '" + argument->text + "'");
        }
      }
      if (argument->kind == NodeKind::KeywordArgument) {
        saw_keyword = true;
      } else if (saw_keyword) {
        fail_at(argument->offset, parameters ? "a parameter without default follows one with a default"
                                             : "a positional argument follows a keyword argument");
      }
      args.push_back(std::move(argument));
      if (is(TokenType::Comma)) ++current_;
    }
    ++current_;  // ')'
    return args;
  }

  // obj[...] contents: an index or a slice start:stop:step.
  NodePtr parse_subscript(size_t at) {
    std::vector<NodePtr> parts;
    bool slice = false;
    while (!is(TokenType::CloseSquareBracket)) {
      if (peek() == nullptr) fail("expected ']'");
      if (is(TokenType::Colon)) {
        parts.push_back(nullptr);
        ++current_;
        slice = true;
      } else {
        parts.push_back(parse_expression());
        if (is(TokenType::Colon)) {
          ++current_;
          slice = true;
        }
      }
    }
    if (parts.empty()) fail_at(at, "expected an index or slice inside []");
    if (!slice) return std::move(parts[0]);
    if (parts.size() > 3) fail_at(at, "a slice takes at most 3 parts (start:stop:step)");
    auto node = make(NodeKind::Slice, at);
    parts.resize(3);
    node->items = std::move(parts);
    return node;
  }

  NodePtr parse_member(NodePtr object) {
    while (is(TokenType::Dot) || is(TokenType::OpenSquareBracket)) {
      const Token& op = tokens_[current_++];
      auto node = make(NodeKind::Member, op.offset);
      node->flag = op.type == TokenType::OpenSquareBracket;
      if (node->flag) {
        node->rhs = parse_subscript(op.offset);
        expect(TokenType::CloseSquareBracket, "']'");
      } else {
        node->rhs = parse_primary();
        if (node->rhs->kind != NodeKind::Identifier && node->rhs->kind != NodeKind::IntegerLiteral) {
          fail_at(node->rhs->offset, "expected an attribute name after '.'");
        }
      }
      node->lhs = std::move(object);
      object = std::move(node);
    }
    return object;
  }

  NodePtr parse_primary() {
    const Token* t = peek();
    if (t == nullptr) fail("expected an expression");
    const Token& token = *t;
    ++current_;
    switch (token.type) {
      case TokenType::NumericLiteral: {
        if (token.value.find('.') != std::string::npos) {
          auto node = make(NodeKind::FloatLiteral, token.offset);
          node->number = std::strtod(token.value.c_str(), nullptr);
          return node;
        }
        auto node = make(NodeKind::IntegerLiteral, token.offset);
        node->integer = std::strtoll(token.value.c_str(), nullptr, 10);
        return node;
      }
      case TokenType::StringLiteral: {
        auto node = make(NodeKind::StringLiteral, token.offset);
        node->text = token.value;
        while (is(TokenType::StringLiteral)) node->text += tokens_[current_++].value;  // 'a' 'b'
        return node;
      }
      case TokenType::Identifier: {
        auto node = make(NodeKind::Identifier, token.offset);
        node->text = token.value;
        return node;
      }
      case TokenType::OpenParen: {
        NodePtr inner = parse_expression_sequence(false);
        expect(TokenType::CloseParen, "')'");
        return inner;
      }
      case TokenType::OpenSquareBracket: {
        auto node = make(NodeKind::ArrayLiteral, token.offset);
        while (!is(TokenType::CloseSquareBracket)) {
          if (peek() == nullptr) fail("expected ']'");
          node->items.push_back(parse_expression());
          if (is(TokenType::Comma)) ++current_;
        }
        ++current_;
        return node;
      }
      case TokenType::OpenCurlyBracket: {
        auto node = make(NodeKind::ObjectLiteral, token.offset);
        while (!is(TokenType::CloseCurlyBracket)) {
          if (peek() == nullptr) fail("expected '}'");
          node->items.push_back(parse_expression());
          expect(TokenType::Colon, "':' between a key and its value");
          node->items.push_back(parse_expression());
          if (is(TokenType::Comma)) ++current_;
        }
        ++current_;
        return node;
      }
      default:
        --current_;
        fail("expected an expression");
    }
  }

  const std::vector<Token>& tokens_;
  const SourceLocator& locator_;
  size_t end_offset_;
  size_t current_ = 0;
  int depth_ = 0;
};

}  // namespace

Program parse(const std::vector<Token>& tokens, const SourceLocator& locator, size_t text_size) {
  return Parser(tokens, locator, text_size).run();
}

}  // namespace moex::serve::jinja
