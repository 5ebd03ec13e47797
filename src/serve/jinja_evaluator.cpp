#include "serve/jinja_evaluator.h"

#include <cmath>

#include "serve/jinja_builtins.h"

namespace moex::serve::jinja {
namespace {

struct LoopBreak {};
struct LoopContinue {};

class Evaluator {
 public:
  void render_block(const std::vector<NodePtr>& statements, Scope& scope, std::string& out) {
    for (const NodePtr& statement : statements) render_statement(*statement, scope, out);
  }

  Value evaluate(const Node& node, Scope& scope) {
    const Nest nest(*this);
    try {
      return evaluate_here(node, scope);
    } catch (RenderError& e) {
      if (!e.located) {
        e.located = true;
        e.offset = node.offset;
      }
      throw;
    }
  }

 private:
  // Rendering recurses through nested nodes and macro calls: bounded, so a recursive macro is an
  // error, not a stack overflow.
  static constexpr int kMaxDepth = 500;
  struct Nest {
    explicit Nest(Evaluator& evaluator) : e(evaluator) {
      if (++e.depth_ > kMaxDepth) {
        --e.depth_;
        throw RenderError("the template nests or recurses more than " +
                          std::to_string(kMaxDepth) + " levels deep");
      }
    }
    ~Nest() { --e.depth_; }
    Evaluator& e;
  };
  int depth_ = 0;
  // Loop iterations of one render, bounded so a runaway template ends its request.
  static constexpr int64_t kMaxIterations = 1000000;
  int64_t iterations_ = 0;

  void render_statement(const Node& node, Scope& scope, std::string& out) {
    const Nest nest(*this);
    switch (node.kind) {
      case NodeKind::Text:
        out += node.text;
        return;
      case NodeKind::Comment:
        return;
      case NodeKind::Output: {
        const Value v = evaluate(*node.lhs, scope);
        if (v.type != ValueType::None && v.type != ValueType::Undefined) out += to_output(v);
        return;
      }
      case NodeKind::If:
        render_block(truthy(evaluate(*node.lhs, scope)) ? node.body : node.alternate, scope, out);
        return;
      case NodeKind::For:
        render_for(node, scope, out);
        return;
      case NodeKind::Set:
        execute_set(node, scope);
        return;
      case NodeKind::Macro:
        define_macro(node, scope);
        return;
      case NodeKind::Break:
        throw LoopBreak{};
      case NodeKind::Continue:
        throw LoopContinue{};
      default: {
        const Value v = evaluate(node, scope);
        if (v.type != ValueType::None && v.type != ValueType::Undefined) out += to_output(v);
      }
    }
  }

  void bind_target(const Node& target, const Value& value, Scope& scope) {
    if (target.kind == NodeKind::Identifier) {
      scope.set(target.text, value);
      return;
    }
    // (a, b): unpack a list of the same length.
    if (value.type != ValueType::Array) {
      throw RenderError(std::string("cannot unpack a ") + type_name(value.type) + " value into " +
                        std::to_string(target.items.size()) + " names");
    }
    if (value.array->size() != target.items.size()) {
      throw RenderError(std::string("too ") + (value.array->size() < target.items.size() ? "few" : "many") +
                        " values to unpack (expected " + std::to_string(target.items.size()) + ", got " +
                        std::to_string(value.array->size()) + ")");
    }
    for (size_t i = 0; i < target.items.size(); ++i) {
      if (target.items[i]->kind != NodeKind::Identifier) fail("can only unpack into names");
      scope.set(target.items[i]->text, (*value.array)[i]);
    }
  }

  void render_for(const Node& node, Scope& outer, std::string& out) {
    Scope scope(&outer);
    Value iterable = evaluate(*node.rhs, scope);
    if (iterable.type == ValueType::Object) {
      Array keys;
      for (const auto& entry : iterable.object->entries) keys.push_back(Value::from_string(entry.first));
      iterable = Value::from_array(std::move(keys));
    }
    if (iterable.type != ValueType::Array) {
      RenderError error(std::string("cannot loop over a ") + type_name(iterable.type) + " value");
      error.located = true;
      error.offset = node.rhs->offset;
      throw error;
    }
    Array items;
    for (const Value& item : *iterable.array) {
      if (node.extra) {  // {% for x in xs if cond %}
        Scope filter_scope(&scope);
        bind_target(*node.lhs, item, filter_scope);
        if (!truthy(evaluate(*node.extra, filter_scope))) continue;
      }
      items.push_back(item);
    }
    bool no_iteration = true;
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      if (++iterations_ > kMaxIterations)
        throw RenderError("the template's loops ran more than " +
                          std::to_string(kMaxIterations) + " iterations");
      Object loop;
      loop.entries = {
          {"index", Value::from_int(i + 1)},
          {"index0", Value::from_int(i)},
          {"revindex", Value::from_int(length - i)},
          {"revindex0", Value::from_int(length - i - 1)},
          {"first", Value::from_bool(i == 0)},
          {"last", Value::from_bool(i == length - 1)},
          {"length", Value::from_int(length)},
          {"previtem", i > 0 ? items[i - 1] : Value::undefined()},
          {"nextitem", i < length - 1 ? items[i + 1] : Value::undefined()},
      };
      scope.set("loop", Value::from_object(std::move(loop)));
      bind_target(*node.lhs, items[i], scope);
      // An iteration left by break or continue drops what it wrote, as @huggingface/jinja does.
      std::string iteration;
      try {
        render_block(node.body, scope, iteration);
      } catch (const LoopContinue&) {
        continue;
      } catch (const LoopBreak&) {
        break;
      }
      out += iteration;
      no_iteration = false;
    }
    if (no_iteration) render_block(node.alternate, scope, out);
  }

  void execute_set(const Node& node, Scope& scope) {
    Value value;
    if (node.rhs) {
      value = evaluate(*node.rhs, scope);
    } else {
      std::string text;
      render_block(node.body, scope, text);
      value = Value::from_string(std::move(text));
    }
    const Node& target = *node.lhs;
    if (target.kind == NodeKind::Identifier || target.kind == NodeKind::TupleLiteral) {
      try {
        bind_target(target, value, scope);
      } catch (RenderError& e) {
        if (!e.located) {
          e.located = true;
          e.offset = node.offset;
        }
        throw;
      }
      return;
    }
    if (target.kind == NodeKind::Member && !target.flag && target.rhs->kind == NodeKind::Identifier) {
      const Value object = evaluate(*target.lhs, scope);
      if (object.type != ValueType::Namespace) {
        RenderError error(std::string("cannot assign an attribute of a ") + type_name(object.type) +
                          " value (only of a namespace())");
        error.located = true;
        error.offset = target.offset;
        throw error;
      }
      object.object->set(target.rhs->text, std::move(value));
      return;
    }
    RenderError error("cannot assign to this expression");
    error.located = true;
    error.offset = target.offset;
    throw error;
  }

  void define_macro(const Node& node, Scope& scope) {
    const Node* macro = &node;
    Evaluator* self = this;
    scope.set(node.text, Value::from_function([macro, self](const CallArgs& args, Scope& caller) {
      Scope local(&caller);
      const auto& parameters = macro->items;
      if (args.positional.size() > parameters.size()) {
        fail("macro '" + macro->text + "' takes at most " + std::to_string(parameters.size()) + " argument(s)");
      }
      for (const auto& keyword : args.keywords) {
        bool known = false;
        for (const NodePtr& p : parameters) known = known || p->text == keyword.first;
        if (!known) fail("macro '" + macro->text + "' has no parameter '" + keyword.first + "'");
      }
      std::vector<const Node*> pending_defaults;
      for (size_t i = 0; i < parameters.size(); ++i) {
        const Node& parameter = *parameters[i];
        if (i < args.positional.size()) {
          local.set(parameter.text, args.positional[i]);
        } else if (const Value* v = args.keyword(parameter.text)) {
          local.set(parameter.text, *v);
        } else {
          local.set(parameter.text, Value::undefined());
          if (parameter.kind == NodeKind::KeywordArgument) pending_defaults.push_back(&parameter);
        }
      }
      for (const Node* parameter : pending_defaults) local.set(parameter->text, self->evaluate(*parameter->lhs, local));
      std::string out;
      self->render_block(macro->body, local, out);
      return Value::from_string(std::move(out));
    }));
  }

  CallArgs evaluate_arguments(const std::vector<NodePtr>& arguments, Scope& scope) {
    CallArgs args;
    for (const NodePtr& argument : arguments) {
      if (argument->kind != NodeKind::KeywordArgument) args.positional.push_back(evaluate(*argument, scope));
    }
    for (const NodePtr& argument : arguments) {
      if (argument->kind != NodeKind::KeywordArgument) continue;
      if (args.keyword(argument->text) != nullptr) fail("keyword argument '" + argument->text + "' given twice");
      args.keywords.emplace_back(argument->text, evaluate(*argument->lhs, scope));
    }
    return args;
  }

  static std::string describe_callee(const Node& callee) {
    if (callee.kind == NodeKind::Identifier) return "'" + callee.text + "'";
    if (callee.kind == NodeKind::Member && !callee.flag && callee.rhs->kind == NodeKind::Identifier) {
      return "method '" + callee.rhs->text + "'";
    }
    return "the expression";
  }

  Value evaluate_here(const Node& node, Scope& scope) {
    switch (node.kind) {
      case NodeKind::IntegerLiteral: return Value::from_int(node.integer);
      case NodeKind::FloatLiteral: return Value::from_float(node.number);
      case NodeKind::StringLiteral: return Value::from_string(node.text);
      case NodeKind::ArrayLiteral:
      case NodeKind::TupleLiteral: {
        Array items;
        for (const NodePtr& item : node.items) items.push_back(evaluate(*item, scope));
        return Value::from_array(std::move(items));
      }
      case NodeKind::ObjectLiteral: {
        Object obj;
        for (size_t i = 0; i + 1 < node.items.size(); i += 2) {
          const Value key = evaluate(*node.items[i], scope);
          if (key.type != ValueType::String) fail(std::string("dict keys must be strings, got ") + type_name(key.type));
          obj.set(key.string, evaluate(*node.items[i + 1], scope));
        }
        return Value::from_object(std::move(obj));
      }
      case NodeKind::Identifier: return scope.lookup(node.text);
      case NodeKind::Member: {
        const Value object = evaluate(*node.lhs, scope);
        if (node.flag && node.rhs->kind == NodeKind::Slice) {
          const auto bound = [&](const NodePtr& part) { return part ? evaluate(*part, scope) : Value::undefined(); };
          return slice_value(object, bound(node.rhs->items[0]), bound(node.rhs->items[1]), bound(node.rhs->items[2]));
        }
        Value property;
        if (node.flag) {
          property = evaluate(*node.rhs, scope);
        } else if (node.rhs->kind == NodeKind::IntegerLiteral) {
          property = Value::from_int(node.rhs->integer);
        } else {
          property = Value::from_string(node.rhs->text);
        }
        return get_member(object, property);
      }
      case NodeKind::Call: {
        const CallArgs args = evaluate_arguments(node.items, scope);
        const Value callee = evaluate(*node.lhs, scope);
        if (callee.type != ValueType::Function) {
          fail(describe_callee(*node.lhs) + " is " +
               (callee.type == ValueType::Undefined ? "undefined" : std::string("a ") + type_name(callee.type)) +
               ", not a function");
        }
        return (*callee.function)(args, scope);
      }
      case NodeKind::Unary: return evaluate_unary(node, scope);
      case NodeKind::Binary: return evaluate_binary(node, scope);
      case NodeKind::Filter: {
        const Value operand = evaluate(*node.lhs, scope);
        const CallArgs args = node.flag ? evaluate_arguments(node.items, scope) : CallArgs{};
        return apply_filter(operand, node.text, node.flag, args);
      }
      case NodeKind::Test: {
        const Value operand = evaluate(*node.lhs, scope);
        return Value::from_bool(apply_test(operand, node.text) != node.flag);
      }
      case NodeKind::Select:
        return truthy(evaluate(*node.rhs, scope)) ? evaluate(*node.lhs, scope) : Value::undefined();
      case NodeKind::Ternary:
        return truthy(evaluate(*node.rhs, scope)) ? evaluate(*node.lhs, scope) : evaluate(*node.extra, scope);
      default:
        fail("this statement cannot be used as an expression");
    }
  }

  Value evaluate_unary(const Node& node, Scope& scope) {
    const Value v = evaluate(*node.lhs, scope);
    if (node.text == "not") return Value::from_bool(!truthy(v));
    const int64_t sign = node.text == "-" ? -1 : 1;
    if (v.type == ValueType::Float) return Value::from_float(static_cast<double>(sign) * v.number);
    if (v.type == ValueType::Integer) return Value::from_int(sign * v.integer);
    if (v.type == ValueType::Boolean) return Value::from_int(sign * (v.boolean ? 1 : 0));
    fail("unary " + node.text + " needs a number, got a " + type_name(v.type));
  }

  Value evaluate_binary(const Node& node, Scope& scope) {
    const std::string& op = node.text;
    const Value left = evaluate(*node.lhs, scope);
    if (op == "and") return truthy(left) ? evaluate(*node.rhs, scope) : left;
    if (op == "or") return truthy(left) ? left : evaluate(*node.rhs, scope);
    const Value right = evaluate(*node.rhs, scope);
    if (op == "==") return Value::from_bool(loose_equals(left, right));
    if (op == "!=") return Value::from_bool(!loose_equals(left, right));
    const bool membership = op == "in" || op == "not in";
    if (left.type == ValueType::Undefined || right.type == ValueType::Undefined) {
      // `x in undefined` is false; anything else on undefined is an error.
      if (right.type == ValueType::Undefined && membership) return Value::from_bool(op == "not in");
      fail("cannot apply '" + op + "' to an undefined value");
    }
    if (left.type == ValueType::None || right.type == ValueType::None) fail("cannot apply '" + op + "' to none");
    if (op == "~") return Value::from_string(to_js_string(left) + to_js_string(right));
    const auto numeric_like = [](const Value& v) { return v.is_number() || v.type == ValueType::Boolean; };
    if (op == "**" && numeric_like(left) && numeric_like(right)) {
      const auto as_number = [](const Value& v) { return v.type == ValueType::Boolean ? (v.boolean ? 1.0 : 0.0) : v.as_double(); };
      const double a = as_number(left), b = as_number(right);
      if (a == 0 && b < 0) fail("0 cannot be raised to a negative power");
      const double result = std::pow(a, b);
      if (!std::isfinite(result)) fail("'**' result is not a finite number");
      if (left.type == ValueType::Float || right.type == ValueType::Float || b < 0) return Value::from_float(result);
      return Value::from_int(static_cast<int64_t>(result));
    }
    if (left.is_number() && right.is_number()) {
      const bool floating = left.type == ValueType::Float || right.type == ValueType::Float;
      const double a = left.as_double(), b = right.as_double();
      if (op == "+" || op == "-" || op == "*") {
        if (!floating) {
          const int64_t x = left.integer, y = right.integer;
          return Value::from_int(op == "+" ? x + y : op == "-" ? x - y : x * y);
        }
        return Value::from_float(op == "+" ? a + b : op == "-" ? a - b : a * b);
      }
      if (op == "/") return Value::from_float(a / b);
      if (op == "//") {
        if (!floating) {
          if (right.integer == 0) fail("integer division by zero");
          return Value::from_int(static_cast<int64_t>(std::floor(a / b)));
        }
        return Value::from_float(std::floor(a / b));
      }
      if (op == "%") {
        if (!floating) {
          if (right.integer == 0) fail("integer modulo by zero");
          return Value::from_int(left.integer % right.integer);  // sign of the dividend, as in JavaScript
        }
        return Value::from_float(std::fmod(a, b));
      }
      if (op == "<") return Value::from_bool(a < b);
      if (op == ">") return Value::from_bool(a > b);
      if (op == "<=") return Value::from_bool(a <= b);
      if (op == ">=") return Value::from_bool(a >= b);
    } else if (left.type == ValueType::Array && right.type == ValueType::Array) {
      if (op == "+") {
        Array joined = *left.array;
        joined.insert(joined.end(), right.array->begin(), right.array->end());
        return Value::from_array(std::move(joined));
      }
    } else if (right.type == ValueType::Array && membership) {
      bool found = false;
      for (const Value& item : *right.array) found = found || strict_equals(item, left);
      return Value::from_bool(found == (op == "in"));
    }
    if ((left.type == ValueType::String || right.type == ValueType::String) && op == "+") {
      return Value::from_string(to_js_string(left) + to_js_string(right));
    }
    if (left.type == ValueType::String && right.type == ValueType::String && membership) {
      return Value::from_bool((right.string.find(left.string) != std::string::npos) == (op == "in"));
    }
    if (left.type == ValueType::String && right.type == ValueType::Object && membership) {
      return Value::from_bool((right.object->find(left.string) != nullptr) == (op == "in"));
    }
    fail("unsupported operator '" + op + "' between a " + type_name(left.type) + " and a " + type_name(right.type));
  }
};

}  // namespace

std::string render_program(const Program& program, Scope& globals) {
  Evaluator evaluator;
  std::string out;
  try {
    evaluator.render_block(program.body, globals, out);
  } catch (const LoopBreak&) {
    throw RenderError("{% break %} outside a loop");
  } catch (const LoopContinue&) {
    throw RenderError("{% continue %} outside a loop");
  }
  return out;
}

}  // namespace moex::serve::jinja
