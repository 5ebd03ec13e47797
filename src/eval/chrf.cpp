#include "eval/chrf.h"

#include <algorithm>
#include <array>
#include <map>

#include "eval/text.h"

namespace moex::eval {
namespace {

// Per order: [hypothesis n-grams, reference n-grams, clipped matches].
using ChrfStats = std::array<int64_t, 3 * kChrfCharOrder>;
using CharNgrams = std::array<std::map<std::u32string, int64_t>, kChrfCharOrder>;

CharNgrams char_ngrams(const std::string& line) {
  std::u32string text;  // ''.join(line.split())
  for (const std::u32string& word : split_python(to_code_points(line))) text += word;
  CharNgrams out;
  for (int n = 1; n <= kChrfCharOrder; ++n)
    for (size_t i = 0; i + n <= text.size(); ++i) ++out[n - 1][text.substr(i, n)];
  return out;
}

// CHRF._compute_f_score without eps smoothing (sacrebleu's default).
double f_score(const ChrfStats& s) {
  constexpr double kEps = 1e-16;
  const double factor = kChrfBeta * kChrfBeta;
  double avg_prec = 0, avg_rec = 0;
  int effective_order = 0;
  for (int i = 0; i < kChrfCharOrder; ++i) {
    const int64_t n_hyp = s[3 * i], n_ref = s[3 * i + 1], n_match = s[3 * i + 2];
    const double prec = n_hyp > 0 ? static_cast<double>(n_match) / n_hyp : kEps;
    const double rec = n_ref > 0 ? static_cast<double>(n_match) / n_ref : kEps;
    if (n_hyp > 0 && n_ref > 0) {
      avg_prec += prec;
      avg_rec += rec;
      ++effective_order;
    }
  }
  if (effective_order == 0) return 0.0;
  avg_prec /= effective_order;
  avg_rec /= effective_order;
  if (avg_prec + avg_rec == 0) return 0.0;
  return 100 * ((1 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec));
}

}  // namespace

double corpus_chrf(const std::vector<std::string>& hypotheses,
                   const std::vector<std::vector<std::string>>& references) {
  check_reference_streams("corpus_chrf", hypotheses.size(), references);
  ChrfStats total{};
  for (size_t i = 0; i < hypotheses.size(); ++i) {
    const CharNgrams hyp = char_ngrams(hypotheses[i]);
    ChrfStats best{};
    double best_f = -1.0;
    for (const auto& stream : references) {
      const CharNgrams ref = char_ngrams(stream[i]);
      ChrfStats s{};
      for (int n = 0; n < kChrfCharOrder; ++n) {
        for (const auto& [gram, c] : hyp[n]) {
          s[3 * n] += c;
          const auto it = ref[n].find(gram);
          if (it != ref[n].end()) s[3 * n + 2] += std::min(c, it->second);
        }
        for (const auto& [gram, c] : ref[n]) s[3 * n + 1] += c;
        // sacrebleu does not count hypothesis n-grams of an order the reference has none of.
        if (ref[n].empty()) s[3 * n] = 0;
      }
      const double f = f_score(s);
      if (f > best_f) best_f = f, best = s;  // the first of equal references wins
    }
    for (size_t j = 0; j < total.size(); ++j) total[j] += best[j];
  }
  return f_score(total);
}

}  // namespace moex::eval
