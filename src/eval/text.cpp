#include "eval/text.h"

#include "core/error.h"
#include "data/unicode.h"

namespace moex::eval {

std::u32string to_code_points(std::string_view utf8) {
  std::u32string out;
  size_t pos = 0;
  while (pos < utf8.size()) out.push_back(static_cast<char32_t>(data::utf8_next(utf8, &pos)));
  return out;
}

std::string to_utf8(const std::u32string& text) {
  std::string out;
  for (const char32_t c : text) data::utf8_append(static_cast<uint32_t>(c), &out);
  return out;
}

bool is_python_space(char32_t c) {
  // CPython's _PyUnicode_IsWhitespace: bidirectional types WS, B, S and category Zs.
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::vector<std::u32string> split_python(const std::u32string& text) {
  std::vector<std::u32string> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_python_space(text[i])) ++i;
    const size_t start = i;
    while (i < text.size() && !is_python_space(text[i])) ++i;
    if (i > start) out.push_back(text.substr(start, i - start));
  }
  return out;
}

void check_reference_streams(const char* metric, size_t num_hypotheses,
                             const std::vector<std::vector<std::string>>& references) {
  MOEX_CHECK(!references.empty(), metric, ": no reference stream");
  for (size_t k = 0; k < references.size(); ++k)
    MOEX_CHECK(references[k].size() == num_hypotheses, metric, ": reference stream ", k, " has ",
               references[k].size(), " lines for ", num_hypotheses, " hypotheses");
}

}  // namespace moex::eval
