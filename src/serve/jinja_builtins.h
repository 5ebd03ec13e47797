// Built-in filters, tests, methods (str.startswith, dict.items, ...) and global functions
// (namespace, raise_exception, range, strftime_now), each behaving as in @huggingface/jinja.
// Errors are RenderError; the evaluator adds the template position.
#pragma once

#include <string>

#include "serve/jinja_scope.h"
#include "serve/jinja_value.h"

namespace moex::serve::jinja {

// object.name / object[index]: dict entries and methods, list and string items and methods;
// undefined when absent.
Value get_member(const Value& object, const Value& property);

// object[start:stop:step] on a list or string (each bound may be undefined).
Value slice_value(const Value& object, const Value& start, const Value& stop, const Value& step);

// operand | name or operand | name(args...) (`called` tells the two apart, as some filters differ).
Value apply_filter(const Value& operand, const std::string& name, bool called, const CallArgs& args);

// operand is name
bool apply_test(const Value& operand, const std::string& name);

// true/false/none (and True/False/None), namespace(), raise_exception(), range(), strftime_now().
void install_globals(Scope& scope);

}  // namespace moex::serve::jinja
