// Runtime values of the template renderer and their conversions to text, with the semantics of
// @huggingface/jinja (JavaScript numbers, JSON.stringify, loose == equality).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace moex::serve::jinja {

// An error while rendering. The evaluator adds the template position of the innermost node that
// failed; `raised` marks errors thrown by the template itself through raise_exception().
struct RenderError : std::runtime_error {
  explicit RenderError(const std::string& message, bool raised = false)
      : std::runtime_error(message), raised(raised) {}
  bool raised;
  bool located = false;
  size_t offset = 0;  // in the template text, once located
};

[[noreturn]] inline void fail(const std::string& message) {
  throw RenderError(message);
}

enum class ValueType { Undefined, None, Boolean, Integer, Float, String, Array, Object, Namespace, Function };

struct Value;
class Scope;

using Array = std::vector<Value>;

// A mapping that keeps insertion order (as JavaScript's Map does).
struct Object {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
  const Value* keyword(const std::string& name) const;
};

// Built-in functions, bound methods and macros. Macros render in the caller's scope, as in
// @huggingface/jinja.
using Function = std::function<Value(const CallArgs& args, Scope& caller)>;

struct Value {
  ValueType type = ValueType::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0;
  std::string string;
  std::shared_ptr<Array> array;
  std::shared_ptr<Object> object;  // Object and Namespace
  std::shared_ptr<Function> function;

  static Value undefined() { return Value(); }
  static Value none();
  static Value from_bool(bool b);
  static Value from_int(int64_t i);
  static Value from_float(double d);
  static Value from_string(std::string s);
  static Value from_array(Array items);
  static Value from_object(Object obj);
  static Value new_namespace(Object obj);
  static Value from_function(Function fn);
  // JSON as JavaScript sees it after JSON.parse: integral numbers are integers, and an object's
  // array-index keys ("0", "1", ...) come first in ascending order.
  static Value from_json(const nlohmann::ordered_json& json);

  bool is(ValueType t) const { return type == t; }
  bool is_number() const { return type == ValueType::Integer || type == ValueType::Float; }
  double as_double() const { return type == ValueType::Integer ? static_cast<double>(integer) : number; }
};

const char* type_name(ValueType type);

// Python-like truthiness: empty strings, lists and dicts, 0, none and undefined are false.
bool truthy(const Value& v);

// What {{ v }} writes (undefined and none write nothing; the caller skips them).
std::string to_output(const Value& v);
// JavaScript's String(v.value), used by + and ~ on strings: 2.0 is "2", lists join with ",".
std::string to_js_string(const Value& v);
// JavaScript's Number.prototype.toString.
std::string js_number_to_string(double d);

struct JsonOptions {
  int indent = 0;  // 0: one line
  bool ensure_ascii = false;
  bool sort_keys = false;
  bool has_separators = false;
  std::string item_separator, key_separator;
};
// The tojson filter (undefined becomes null) and, with undefined_as_null false, how lists and
// dicts print.
std::string to_json(const Value& v, const JsonOptions& options, bool undefined_as_null = true, int depth = 0);

// JavaScript's == on the values (1 == 1.0, null == undefined, "1" == 1) and === (for `in`).
bool loose_equals(const Value& a, const Value& b);
bool strict_equals(const Value& a, const Value& b);

}  // namespace moex::serve::jinja
