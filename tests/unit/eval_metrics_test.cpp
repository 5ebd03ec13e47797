// BLEU and chrF (eval/bleu.h, eval/chrf.h): against sacrebleu's own scores, statistics and 13a
// tokenization on the sets in tests/fixtures/sacrebleu/inputs.json (fixture.json is written by
// tests/reference/make_sacrebleu_fixture.py), and on small cases worked out by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/bleu.h"
#include "eval/chrf.h"

namespace moex::eval {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(MOEX_SOURCE_DIR) / "tests" / "fixtures" / "sacrebleu";

json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return json();
  return json::parse(in);
}

using Lines = std::vector<std::string>;

TEST(SacrebleuParity, CorpusBleuAndChrfMatchSacrebleu) {
  const json inputs = read_json(kFixtures / "inputs.json");
  const json fixture = read_json(kFixtures / "fixture.json");
  ASSERT_FALSE(inputs.is_null()) << kFixtures / "inputs.json"
                                 << " is missing";
  // Not a skip: without sacrebleu's numbers this test has nothing to compare with, so it fails.
  ASSERT_FALSE(fixture.is_null())
      << kFixtures / "fixture.json"
      << " is missing: run `python3 tests/reference/make_sacrebleu_fixture.py` where sacrebleu is "
         "installed";
  const json& corpora = inputs.at("corpora");
  ASSERT_EQ(fixture.at("corpora").size(), corpora.size()) << "fixture.json is out of date";
  for (size_t c = 0; c < corpora.size(); ++c) {
    const json& in = corpora[c];
    const json& want = fixture.at("corpora")[c];
    const std::string name = in.at("name");
    ASSERT_EQ(want.at("name"), name) << "fixture.json is out of date";
    const Lines hyps = in.at("hypotheses");
    const std::vector<Lines> refs = in.at("references");
    const BleuScore bleu = corpus_bleu(hyps, refs);
    EXPECT_NEAR(bleu.score, want.at("bleu").get<double>(), 1e-4) << name;
    for (int n = 0; n < kBleuMaxOrder; ++n) {
      EXPECT_EQ(bleu.correct[n], want.at("bleu_counts")[n].get<int64_t>()) << name << " n=" << n;
      EXPECT_EQ(bleu.total[n], want.at("bleu_totals")[n].get<int64_t>()) << name << " n=" << n;
    }
    EXPECT_EQ(bleu.sys_len, want.at("bleu_sys_len").get<int64_t>()) << name;
    EXPECT_EQ(bleu.ref_len, want.at("bleu_ref_len").get<int64_t>()) << name;
    EXPECT_NEAR(bleu.brevity_penalty, want.at("bleu_bp").get<double>(), 1e-9) << name;
    EXPECT_NEAR(corpus_chrf(hyps, refs), want.at("chrf").get<double>(), 1e-4) << name;
    // Every line, hypotheses then each reference stream, through the 13a tokenizer.
    Lines lines = hyps;
    for (const Lines& stream : refs) lines.insert(lines.end(), stream.begin(), stream.end());
    const json& tokenized = want.at("tokenized_13a");
    ASSERT_EQ(tokenized.size(), lines.size()) << name;
    for (size_t i = 0; i < lines.size(); ++i)
      EXPECT_EQ(tokenize_13a(lines[i]), tokenized[i].get<std::string>())
          << name << " line " << i << ": '" << lines[i] << "'";
  }
}

TEST(Bleu, IdenticalCorpusScores100) {
  const Lines text = {"Mixture of experts, at scale.", "¡Hola, mundo!", "a b c d e"};
  EXPECT_NEAR(corpus_bleu(text, {text}).score, 100.0, 1e-12);
}

// hyp "the cat sat on the mat", ref "the cat is on the mat" (6 tokens each, BP = 1):
//   1-grams: the x2, cat, on, mat match        5/6
//   2-grams: "the cat", "on the", "the mat"     3/5
//   3-grams: "on the mat"                       1/4
//   4-grams: none of 3; 'exp' smoothing gives 1/(2 * 3) = 1/6
//   BLEU = 100 * (5/6 * 3/5 * 1/4 * 1/6)^(1/4) = 100 * (1/48)^(1/4) = 37.99...
TEST(Bleu, WorkedExampleWithExpSmoothing) {
  const BleuScore s = corpus_bleu({"the cat sat on the mat"}, {{"the cat is on the mat"}});
  EXPECT_EQ(s.correct, (std::array<int64_t, 4>{5, 3, 1, 0}));
  EXPECT_EQ(s.total, (std::array<int64_t, 4>{6, 5, 4, 3}));
  EXPECT_NEAR(s.precisions[3], 100.0 / 6, 1e-12);
  EXPECT_EQ(s.brevity_penalty, 1.0);
  EXPECT_NEAR(s.score, 100 * std::pow(1.0 / 48, 0.25), 1e-10);
}

// hyp "the cat sat on the" (5 tokens) is a prefix of ref "the cat sat on the mat" (6): every
// precision is 100%, so BLEU = 100 * BP = 100 * exp(1 - 6/5) = 81.87...
TEST(Bleu, BrevityPenaltyOfAShortHypothesis) {
  const BleuScore s = corpus_bleu({"the cat sat on the"}, {{"the cat sat on the mat"}});
  EXPECT_NEAR(s.brevity_penalty, std::exp(1.0 - 6.0 / 5.0), 1e-15);
  EXPECT_NEAR(s.score, 100 * std::exp(-0.2), 1e-10);
}

// Two references: n-grams clip against the larger count in either, and the reference length is
// the closest one (ties go to the shorter). hyp "a a b" vs refs "a c" and "a a d e": 1-grams a x2
// (second ref) -> 2 of 3 match; lengths 2 and 4 are both 1 away from 3 -> r = 2.
TEST(Bleu, MultipleReferencesClipToTheMaxCountAndPickTheClosestLength) {
  const BleuScore s = corpus_bleu({"a a b"}, {{"a c"}, {"a a d e"}});
  EXPECT_EQ(s.correct[0], 2);
  EXPECT_EQ(s.correct[1], 1);  // "a a"
  EXPECT_EQ(s.ref_len, 2);
  EXPECT_EQ(s.sys_len, 3);
}

TEST(Bleu, EmptyOrUnmatchedHypothesesScoreZero) {
  EXPECT_EQ(corpus_bleu({""}, {{"something here"}}).score, 0.0);
  EXPECT_EQ(corpus_bleu({"x y z w"}, {{"a b c d"}}).score, 0.0);
  // Fewer than 4 tokens in the whole corpus: the 4-gram precision is undefined, BLEU is 0.
  EXPECT_EQ(corpus_bleu({"a b c"}, {{"a b c"}}).score, 0.0);
}

TEST(Bleu, Tokenizer13aByHand) {
  EXPECT_EQ(tokenize_13a("Hello, world!"), "Hello , world !");
  // A period or comma between digits stays; a dash after a digit splits.
  EXPECT_EQ(tokenize_13a("Pi is 3.14, or 1,000 - 10-20."), "Pi is 3.14 , or 1,000 - 10 - 20 .");
  EXPECT_EQ(tokenize_13a("It's well-known"), "It's well-known");
  EXPECT_EQ(tokenize_13a("&quot;x&quot; &amp; y <skipped>"), "\" x \" & y");
  EXPECT_EQ(tokenize_13a("end-\nof line\n"), "endof line");
  EXPECT_EQ(tokenize_13a("¿Dónde está?  "), "¿Dónde está ?");
  EXPECT_EQ(tokenize_13a(""), "");
}

TEST(Chrf, IdenticalTextScores100AndIgnoresWhitespace) {
  EXPECT_NEAR(corpus_chrf({"¡Hola, mundo!"}, {{"¡Hola, mundo!"}}), 100.0, 1e-12);
  EXPECT_NEAR(corpus_chrf({"a b  c"}, {{"abc"}}), 100.0, 1e-12);
}

// hyp "ab", ref "abc": 1-grams P = 2/2, R = 2/3; 2-grams P = 1/1, R = 1/2; 3-grams only in the
// ref (not counted). Averages P = 1, R = 7/12; chrF2 = 5PR / (4P + R) = (35/12) / (55/12) = 7/11.
TEST(Chrf, WorkedExample) {
  EXPECT_NEAR(corpus_chrf({"ab"}, {{"abc"}}), 100.0 * 7 / 11, 1e-12);
}

// Code points, not bytes: "é" vs "e" share no character n-gram (their UTF-8 bytes do not matter).
TEST(Chrf, CountsCodePointsAndEmptyHypothesisScoresZero) {
  EXPECT_EQ(corpus_chrf({"é"}, {{"e"}}), 0.0);
  // "añob" vs "año": 1-grams P 3/4 R 3/3, 2-grams P 2/3 R 2/2, 3-grams P 1/2 R 1/1, 4-grams only
  // in the hyp. P = (3/4 + 2/3 + 1/2)/3 = 23/36, R = 1; chrF2 = 5PR/(4P+R) = (115/36)/(128/36).
  EXPECT_NEAR(corpus_chrf({"añob"}, {{"año"}}), 100.0 * 115 / 128, 1e-12);
  EXPECT_EQ(corpus_chrf({""}, {{"algo"}}), 0.0);
}

// Hypothesis n-grams of an order the sentence's reference lacks are not counted (sacrebleu).
// Corpus {"ab" / "a", "ab" / "ab"}: order 1: hyp 2 + 2, ref 1 + 2, match 1 + 2 -> P 3/4, R 1;
// order 2: the first reference has no 2-gram, so only the second counts: P 1, R 1. Averages
// P = 7/8, R = 1; chrF2 = 5PR/(4P+R) = (35/8)/(36/8) = 35/36. (Counting the first sentence's
// 2-gram would give P = 1/2 for order 2.)
TEST(Chrf, HypothesisNgramsOfAnOrderTheReferenceLacksAreNotCounted) {
  EXPECT_NEAR(corpus_chrf({"ab", "ab"}, {{"a", "ab"}}), 100.0 * 35 / 36, 1e-12);
}

TEST(Metrics, MismatchedStreamsAreAnError) {
  EXPECT_THROW(corpus_bleu({"a", "b"}, {{"a"}}), Error);
  EXPECT_THROW(corpus_chrf({"a"}, {}), Error);
}

}  // namespace
}  // namespace moex::eval
