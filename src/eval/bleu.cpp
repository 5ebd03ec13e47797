#include "eval/bleu.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "eval/text.h"

namespace moex::eval {
namespace {

bool is_digit(char32_t c) {
  return c >= U'0' && c <= U'9';
}

// The first rule of sacrebleu's TokenizerRegexp: [\{-\~\[-\` -\&\(-\+\:-\@\/] (ASCII symbols and
// space; not ' - . , nor digits and letters).
bool is_split_symbol(char32_t c) {
  return (c >= U'{' && c <= U'~') || (c >= U'[' && c <= U'`') || (c >= U' ' && c <= U'&') ||
         (c >= U'(' && c <= U'+') || (c >= U':' && c <= U'@') || c == U'/';
}

// re.sub of a two-character pattern ([first][second]) by `replace`, scanning left to right and
// resuming after each match, as Python does.
template <typename First, typename Second, typename Replace>
std::u32string sub_pairs(const std::u32string& s, First first, Second second, Replace replace) {
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    if (i + 1 < s.size() && first(s[i]) && second(s[i + 1])) {
      replace(s[i], s[i + 1], &out);
      i += 2;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

void replace_all(std::string* s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s->find(from, pos)) != std::string::npos; pos += to.size())
    s->replace(pos, from.size(), to);
}

// n-gram (tokens joined by ' ') -> count, per order.
using NgramCounts = std::array<std::map<std::string, int64_t>, kBleuMaxOrder>;

NgramCounts count_ngrams(const std::vector<std::string>& tokens) {
  NgramCounts counts;
  for (int n = 1; n <= kBleuMaxOrder; ++n)
    for (size_t i = 0; i + n <= tokens.size(); ++i) {
      std::string gram = tokens[i];
      for (int k = 1; k < n; ++k) gram += " " + tokens[i + k];
      ++counts[n - 1][gram];
    }
  return counts;
}

std::vector<std::string> tokens_of(const std::string& line) {
  std::vector<std::string> out;
  for (const std::u32string& t : split_python(to_code_points(tokenize_13a(line))))
    out.push_back(to_utf8(t));
  return out;
}

// Python's math.log, except that sacrebleu's my_log maps 0 to -9999999999.
double my_log(double x) {
  return x == 0.0 ? -9999999999.0 : std::log(x);
}

}  // namespace

std::string tokenize_13a(const std::string& raw) {
  // BLEU._preprocess_segment: rstrip() first.
  std::u32string cps = to_code_points(raw);
  while (!cps.empty() && is_python_space(cps.back())) cps.pop_back();
  std::string line = to_utf8(cps);
  replace_all(&line, "<skipped>", "");
  replace_all(&line, "-\n", "");
  replace_all(&line, "\n", " ");
  if (line.find('&') != std::string::npos) {
    replace_all(&line, "&quot;", "\"");
    replace_all(&line, "&amp;", "&");
    replace_all(&line, "&lt;", "<");
    replace_all(&line, "&gt;", ">");
  }
  const std::u32string padded = U" " + to_code_points(line) + U" ";
  std::u32string s;
  for (const char32_t c : padded) {  // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
    if (is_split_symbol(c)) {
      s += U' ';
      s += c;
      s += U' ';
    } else {
      s += c;
    }
  }
  auto period_comma = [](char32_t c) { return c == U'.' || c == U','; };
  auto not_digit = [](char32_t c) { return !is_digit(c); };
  // ([^0-9])([\.,]) -> '\1 \2 '
  s = sub_pairs(s, not_digit, period_comma, [](char32_t a, char32_t b, std::u32string* out) {
    *out += a;
    *out += U' ';
    *out += b;
    *out += U' ';
  });
  // ([\.,])([^0-9]) -> ' \1 \2'
  s = sub_pairs(s, period_comma, not_digit, [](char32_t a, char32_t b, std::u32string* out) {
    *out += U' ';
    *out += a;
    *out += U' ';
    *out += b;
  });
  // ([0-9])(-) -> '\1 \2 '
  s = sub_pairs(
      s, is_digit, [](char32_t c) { return c == U'-'; },
      [](char32_t a, char32_t b, std::u32string* out) {
        *out += a;
        *out += U' ';
        *out += b;
        *out += U' ';
      });
  std::string out;
  for (const std::u32string& token : split_python(s)) {
    if (!out.empty()) out += ' ';
    out += to_utf8(token);
  }
  return out;
}

BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& references) {
  check_reference_streams("corpus_bleu", hypotheses.size(), references);
  BleuScore r;
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    // References: the maximum count of each n-gram over the references, and their lengths.
    NgramCounts ref_counts;
    std::vector<int64_t> ref_lens;
    for (const auto& stream : references) {
      const std::vector<std::string> tokens = tokens_of(stream[i]);
      ref_lens.push_back(static_cast<int64_t>(tokens.size()));
      const NgramCounts counts = count_ngrams(tokens);
      for (int n = 0; n < kBleuMaxOrder; ++n)
        for (const auto& [gram, c] : counts[n])
          ref_counts[n][gram] = std::max(ref_counts[n][gram], c);
    }
    const std::vector<std::string> hyp = tokens_of(hypotheses[i]);
    const int64_t hyp_len = static_cast<int64_t>(hyp.size());
    // The closest reference length; ties go to the shorter.
    int64_t closest = -1, closest_diff = -1;
    for (const int64_t len : ref_lens) {
      const int64_t diff = std::llabs(hyp_len - len);
      if (closest_diff == -1 || diff < closest_diff || (diff == closest_diff && len < closest))
        closest_diff = diff, closest = len;
    }
    r.sys_len += hyp_len;
    r.ref_len += closest;
    const NgramCounts hyp_counts = count_ngrams(hyp);
    for (int n = 0; n < kBleuMaxOrder; ++n)
      for (const auto& [gram, c] : hyp_counts[n]) {
        r.total[n] += c;
        const auto it = ref_counts[n].find(gram);
        if (it != ref_counts[n].end()) r.correct[n] += std::min(c, it->second);
      }
  }
  // BLEU.compute_bleu with smooth_method 'exp', no effective order.
  r.brevity_penalty = 1.0;
  if (r.sys_len < r.ref_len)
    r.brevity_penalty =
        r.sys_len > 0 ? std::exp(1.0 - static_cast<double>(r.ref_len) / r.sys_len) : 0.0;
  if (std::all_of(r.correct.begin(), r.correct.end(), [](int64_t c) { return c == 0; }))
    return r;  // score 0
  double smooth = 1.0;
  for (int n = 0; n < kBleuMaxOrder; ++n) {
    if (r.total[n] == 0) break;  // this and higher orders keep precision 0
    if (r.correct[n] == 0) {
      smooth *= 2;
      r.precisions[n] = 100.0 / (smooth * static_cast<double>(r.total[n]));
    } else {
      r.precisions[n] = 100.0 * static_cast<double>(r.correct[n]) / static_cast<double>(r.total[n]);
    }
  }
  double log_sum = 0;
  for (const double p : r.precisions) log_sum += my_log(p);
  r.score = r.brevity_penalty * std::exp(log_sum / kBleuMaxOrder);
  return r;
}

}  // namespace moex::eval
