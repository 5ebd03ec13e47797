// Parser of chat templates into a syntax tree, following @huggingface/jinja's grammar and operator
// precedence (filters bind tighter than tests, tests tighter than * /, ...).
#pragma once

#include <string>
#include <vector>

#include "serve/jinja_ast.h"
#include "serve/jinja_lexer.h"

namespace moex::serve::jinja {

// Throws moex::Error "<source>:<line>:<column>: syntax error: ..." on malformed input.
Program parse(const std::vector<Token>& tokens, const SourceLocator& locator, size_t text_size);

}  // namespace moex::serve::jinja
