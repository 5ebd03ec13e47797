// Renders a parsed template: statements write text, expressions evaluate to Values, with
// @huggingface/jinja's semantics (e.g. `set` inside a loop stays in that loop, none and undefined
// print nothing, + concatenates when either side is a string).
#pragma once

#include <string>

#include "serve/jinja_ast.h"
#include "serve/jinja_scope.h"

namespace moex::serve::jinja {

// Throws RenderError (located at the innermost failing node) on runtime errors.
std::string render_program(const Program& program, Scope& globals);

}  // namespace moex::serve::jinja
