// Corpus BLEU exactly as sacrebleu's corpus_bleu computes it with its defaults (docs/eval.md):
// the 13a tokenizer (mteval-v13a), n-grams up to 4, clipped counts against the maximum count over
// the references, the closest reference length (ties to the shorter) for the brevity penalty
// exp(1 - r/c), and the 'exp' smoothing of orders without a match (NIST's mteval smoothing).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace moex::eval {

constexpr int kBleuMaxOrder = 4;

struct BleuScore {
  double score = 0;                                       // 0..100
  std::array<int64_t, kBleuMaxOrder> correct{}, total{};  // clipped matches, hypothesis n-grams
  std::array<double, kBleuMaxOrder> precisions{};         // percent, after smoothing
  double brevity_penalty = 0;
  int64_t sys_len = 0, ref_len = 0;  // tokens
};

// sacrebleu's Tokenizer13a on one line (after its rstrip()): the tokens joined by single spaces.
std::string tokenize_13a(const std::string& line);

// hypotheses[i] against references[k][i] for every reference stream k (sacrebleu's layout: one
// list per set of references, each as long as the hypotheses).
BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& references);

}  // namespace moex::eval
