// Text helpers shared by the translation metrics (eval/bleu.h, eval/chrf.h): strings as Unicode
// code points and Python's idea of whitespace, because sacrebleu (the reference the metrics must
// match, docs/eval.md) works on Python str.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moex::eval {

// UTF-8 -> code points (bytes that are not valid UTF-8 become U+FFFD, data/unicode.h).
std::u32string to_code_points(std::string_view utf8);
std::string to_utf8(const std::u32string& text);

// Python's str.isspace(): what str.split() and str.rstrip() without arguments treat as whitespace.
bool is_python_space(char32_t c);

// Python's str.split() without arguments: runs of whitespace separate, none is kept.
std::vector<std::u32string> split_python(const std::u32string& text);

// Throws unless there is at least one reference stream and each has one line per hypothesis.
void check_reference_streams(const char* metric, size_t num_hypotheses,
                             const std::vector<std::vector<std::string>>& references);

}  // namespace moex::eval
