// Corpus chrF exactly as sacrebleu's corpus_chrf computes it with its defaults (docs/eval.md):
// character n-grams of orders 1..6 over the text with all whitespace removed, no word n-grams,
// beta = 2; per sentence the reference with the best F score is kept; the corpus statistics are
// summed, precision and recall averaged over the orders that have n-grams on both sides, then
// combined into F-beta.
#pragma once

#include <string>
#include <vector>

namespace moex::eval {

constexpr int kChrfCharOrder = 6;
constexpr double kChrfBeta = 2.0;

// 0..100. hypotheses[i] against references[k][i] for every reference stream k.
double corpus_chrf(const std::vector<std::string>& hypotheses,
                   const std::vector<std::vector<std::string>>& references);

}  // namespace moex::eval
