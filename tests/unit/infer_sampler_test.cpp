// The next-token sampler (infer/sampler.h) against references written here: softmax(logits / T)
// probabilities checked by a chi-square test over many seeded draws, the k largest logits and
// the top-p nucleus found by naive loops, seeds, and greedy decoding at temperature 0; logit bias
// and penalties, and log-probabilities with their top alternatives, against naive loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/sampler.h"

namespace moex::infer {
namespace {

// softmax(logits / T) in double, one loop per step.
std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  double max_logit = logits[0];
  for (float l : logits) max_logit = std::max(max_logit, static_cast<double>(l));
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i)
    sum += p[i] = std::exp((logits[i] - max_logit) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

// The probabilities restricted to `allowed` and renormalized; zero elsewhere.
std::vector<double> restricted(const std::vector<double>& p, const std::set<int32_t>& allowed) {
  std::vector<double> out(p.size(), 0.0);
  double sum = 0;
  for (int32_t i : allowed) sum += p[static_cast<size_t>(i)];
  for (int32_t i : allowed) out[static_cast<size_t>(i)] = p[static_cast<size_t>(i)] / sum;
  return out;
}

// The ids of the k largest logits: a token is in when fewer than k logits beat it (the logits
// in these tests are distinct, so there are no ties to break).
std::set<int32_t> k_largest(const std::vector<float>& logits, int64_t k) {
  std::set<int32_t> out;
  for (size_t i = 0; i < logits.size(); ++i) {
    int64_t larger = 0;
    for (float other : logits) larger += other > logits[i];
    if (larger < k) out.insert(static_cast<int32_t>(i));
  }
  return out;
}

// The nucleus: repeatedly take the most probable token not yet taken until the taken mass
// reaches top_p.
std::set<int32_t> nucleus(const std::vector<double>& p, double top_p) {
  std::set<int32_t> out;
  double mass = 0;
  while (mass < top_p && out.size() < p.size()) {
    int32_t best = -1;
    for (size_t i = 0; i < p.size(); ++i)
      if (!out.count(static_cast<int32_t>(i)) && (best < 0 || p[i] > p[static_cast<size_t>(best)]))
        best = static_cast<int32_t>(i);
    out.insert(best);
    mass += p[static_cast<size_t>(best)];
  }
  return out;
}

// How often each id comes up in draws 0..n-1.
std::vector<int64_t> counts(const std::vector<float>& logits, const SamplingParams& params,
                            int64_t n) {
  std::vector<int64_t> c(logits.size(), 0);
  for (int64_t d = 0; d < n; ++d) {
    const int32_t id = sample_token(logits.data(), static_cast<int64_t>(logits.size()), params,
                                    static_cast<uint64_t>(d));
    EXPECT_GE(id, 0);
    EXPECT_LT(id, static_cast<int32_t>(logits.size()));
    ++c[static_cast<size_t>(id)];
  }
  return c;
}

// Pearson's statistic sum (observed - n p)^2 / (n p) over the ids with p > 0; an id drawn with
// p == 0 makes it infinite.
double chi_square(const std::vector<int64_t>& observed, const std::vector<double>& p) {
  int64_t n = 0;
  for (int64_t c : observed) n += c;
  double stat = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      if (observed[i] > 0) return INFINITY;
      continue;
    }
    const double expected = static_cast<double>(n) * p[i];
    stat += (observed[i] - expected) * (observed[i] - expected) / expected;
  }
  return stat;
}

// P(X > x) for X chi-square with `df` degrees of freedom: 1 - P(df/2, x/2), the lower
// regularized gamma function by its power series.
double chi_square_tail(double x, int df) {
  const double a = df / 2.0, y = x / 2.0;
  if (y <= 0) return 1.0;
  double term = 1.0 / a, sum = term;
  for (int n = 1; n < 10000 && term > 1e-18 * sum; ++n) sum += term *= y / (a + n);
  return 1.0 - std::exp(a * std::log(y) - y - std::lgamma(a)) * sum;
}

// The x whose tail probability is 1e-6, by bisection: a correct sampler exceeds it once in a
// million seeds, and the draws are seeded, so a given build passes or fails the same way every
// run.
double chi_square_limit(int df) {
  double lo = 0, hi = 1000;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (chi_square_tail(mid, df) > 1e-6 ? lo : hi) = mid;
  }
  return lo;
}

std::vector<float> random_logits(int n, uint64_t seed, double scale) {
  std::vector<float> l(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    l[static_cast<size_t>(i)] = static_cast<float>(scale * (2 * philox_uniform(seed, 1, i) - 1));
  return l;
}

constexpr int64_t kDraws = 200000;

TEST(InferSampler, ChiSquareTailMatchesClosedForms) {
  // Closed forms: df 1 is erfc(sqrt(x / 2)); an even df is exp(-x/2) sum_{j < df/2} (x/2)^j / j!.
  for (double x : {0.5, 3.0, 10.0, 25.0, 40.0}) {
    EXPECT_NEAR(chi_square_tail(x, 1), std::erfc(std::sqrt(x / 2)), 1e-12) << x;
    for (int df : {2, 4, 10}) {
      double sum = 0, term = 1;
      for (int j = 0; j < df / 2; ++j, term *= (x / 2) / j) sum += term;
      EXPECT_NEAR(chi_square_tail(x, df), std::exp(-x / 2) * sum, 1e-12) << x << " " << df;
    }
  }
  EXPECT_NEAR(chi_square_limit(2), 2 * std::log(1e6), 1e-6);  // exp(-x/2) = 1e-6
}

TEST(InferSampler, TemperatureFrequenciesFollowSoftmaxOfLogitsOverT) {
  const std::vector<float> logits = {1.0f, 2.5f, -0.5f, 0.0f, 1.7f, -2.0f, 0.8f, 2.0f, -1.0f, 0.3f};
  for (double t : {0.5, 1.0, 2.0}) {
    SamplingParams params;
    params.temperature = t;
    params.seed = 11;
    const std::vector<int64_t> c = counts(logits, params, kDraws);
    const std::vector<double> p = softmax(logits, t);
    const double limit = chi_square_limit(static_cast<int>(logits.size()) - 1);
    EXPECT_LT(chi_square(c, p), limit) << "T " << t;
    // The same draws are far from the distribution of a different temperature, so this test
    // would notice a temperature applied wrongly (ignored, inverted, squared).
    for (double other : {t * 0.8, t * 1.25})
      EXPECT_GT(chi_square(c, softmax(logits, other)), 10 * limit) << "T " << t << " vs " << other;
  }
}

TEST(InferSampler, TopKNeverLeavesTheKLargestAndKeepsTheirOdds) {
  const std::vector<float> logits = random_logits(40, 5, 3.0);
  for (int64_t k : {1, 3, 7}) {
    SamplingParams params;
    params.temperature = 1.3;
    params.top_k = k;
    params.seed = 21;
    const std::set<int32_t> top = k_largest(logits, k);
    ASSERT_EQ(top.size(), static_cast<size_t>(k));
    const std::vector<int64_t> c = counts(logits, params, kDraws);
    for (size_t i = 0; i < c.size(); ++i)
      if (!top.count(static_cast<int32_t>(i))) {
        EXPECT_EQ(c[i], 0) << "k " << k << " id " << i;
      }
    // Within the k, the odds are softmax(logits / T) renormalized over them.
    if (k > 1) {
      const std::vector<double> p = restricted(softmax(logits, params.temperature), top);
      EXPECT_LT(chi_square(c, p), chi_square_limit(static_cast<int>(k) - 1)) << "k " << k;
    }
  }
}

// Greedy decoding (temperature 0) returns the first of tied largest logits, NaNs never chosen
// (wherever they are; the device sampler orders them last too), at every vocabulary length around
// the vector widths.
TEST(InferSampler, GreedyIsTheFirstLargestLogit) {
  SamplingParams greedy;  // temperature 0
  for (const int64_t n : {1, 2, 7, 8, 15, 16, 17, 33, 1000, 8001}) {
    for (uint64_t seed = 0; seed < 6; ++seed) {
      std::vector<float> logits = random_logits(static_cast<int>(n), 300 + seed, 4.0);
      if (seed % 2 == 1 && n > 3)
        logits[static_cast<size_t>(n / 3)] = logits[static_cast<size_t>(n - 1)] = 9.0f;
      if (seed == 2 && n > 2) logits[1] = std::nanf("");
      if (seed == 4) logits[0] = std::nanf("");
      int64_t want = -1;  // the first largest of the numbers
      for (int64_t i = 0; i < n; ++i)
        if (!std::isnan(logits[i]) && (want < 0 || logits[i] > logits[want])) want = i;
      if (want < 0) want = 0;  // every logit NaN
      EXPECT_EQ(sample_token(logits.data(), n, greedy, 0), want) << "n " << n << " seed " << seed;
    }
  }
}

TEST(InferSampler, TopKOfOneIsTheArgmax) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> logits = random_logits(50, 100 + seed, 4.0);
    int32_t argmax = 0;
    for (size_t i = 1; i < logits.size(); ++i)
      if (logits[i] > logits[static_cast<size_t>(argmax)]) argmax = static_cast<int32_t>(i);
    SamplingParams params;
    params.temperature = 5.0;  // flat: without the limit other tokens would come up often
    params.top_k = 1;
    params.seed = seed;
    for (uint64_t d = 0; d < 50; ++d) EXPECT_EQ(sample_token(logits.data(), 50, params, d), argmax);
  }
}

TEST(InferSampler, TopKAtOrAboveTheVocabularyIsNoLimit) {
  const std::vector<float> logits = random_logits(12, 8, 2.0);
  SamplingParams all;
  all.temperature = 0.9;
  all.seed = 4;
  for (int64_t k : {12, 13, 1000}) {
    SamplingParams limited = all;
    limited.top_k = k;
    for (uint64_t d = 0; d < 500; ++d)
      EXPECT_EQ(sample_token(logits.data(), 12, limited, d),
                sample_token(logits.data(), 12, all, d))
          << "k " << k << " draw " << d;
  }
}

TEST(InferSampler, TopPNeverLeavesTheNucleusAndKeepsItsOdds) {
  const std::vector<float> logits = random_logits(30, 9, 3.0);
  for (double temperature : {0.7, 1.5}) {
    const std::vector<double> p = softmax(logits, temperature);
    for (double top_p : {0.3, 0.6, 0.9}) {
      const std::set<int32_t> core = nucleus(p, top_p);
      ASSERT_LT(core.size(), p.size()) << "the nucleus must leave something out to test";
      SamplingParams params;
      params.temperature = temperature;
      params.top_p = top_p;
      params.seed = 33;
      const std::vector<int64_t> c = counts(logits, params, kDraws);
      for (size_t i = 0; i < c.size(); ++i) {
        if (!core.count(static_cast<int32_t>(i))) {
          EXPECT_EQ(c[i], 0) << "T " << temperature << " top_p " << top_p << " id " << i;
        }
      }
      if (core.size() > 1) {
        EXPECT_LT(chi_square(c, restricted(p, core)),
                  chi_square_limit(static_cast<int>(core.size()) - 1))
            << "T " << temperature << " top_p " << top_p;
      } else {
        EXPECT_EQ(c[static_cast<size_t>(*core.begin())], kDraws);
      }
    }
  }
}

TEST(InferSampler, TopPAfterTopKIsTheNucleusOfTheKRenormalized) {
  // top_k first, then the nucleus of the k tokens' renormalized probabilities.
  const std::vector<float> logits = random_logits(30, 13, 2.0);
  SamplingParams params;
  params.temperature = 1.0;
  params.top_k = 8;
  params.top_p = 0.7;
  params.seed = 2;
  const std::set<int32_t> top = k_largest(logits, params.top_k);
  const std::vector<double> within_k = restricted(softmax(logits, params.temperature), top);
  const std::set<int32_t> core = nucleus(within_k, params.top_p);
  ASSERT_LT(core.size(), top.size());
  const std::vector<int64_t> c = counts(logits, params, kDraws);
  for (size_t i = 0; i < c.size(); ++i)
    if (!core.count(static_cast<int32_t>(i))) {
      EXPECT_EQ(c[i], 0) << "id " << i;
    }
  EXPECT_LT(chi_square(c, restricted(within_k, core)),
            chi_square_limit(static_cast<int>(core.size()) - 1));
}

TEST(InferSampler, SameSeedSameSequenceOtherSeedOtherSequence) {
  const std::vector<float> logits = random_logits(16, 17, 1.0);
  auto sequence = [&](uint64_t seed) {
    SamplingParams params;
    params.temperature = 1.0;
    params.top_k = 10;
    params.top_p = 0.95;
    params.seed = seed;
    std::vector<int32_t> out;
    for (uint64_t d = 0; d < 64; ++d) out.push_back(sample_token(logits.data(), 16, params, d));
    return out;
  };
  const std::vector<int32_t> a = sequence(1234);
  EXPECT_EQ(sequence(1234), a);
  EXPECT_GT(std::set<int32_t>(a.begin(), a.end()).size(), 3u) << "draws differ along a sequence";
  for (uint64_t other : {0ull, 1235ull, 99999ull})
    EXPECT_NE(sequence(other), a) << "seed " << other;
}

TEST(InferSampler, TemperatureZeroIsGreedyWithLowestIdOnTies) {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  for (uint64_t seed : {0ull, 7ull})
    for (int64_t k : {0, 2})
      for (double top_p : {1.0, 0.1})
        for (uint64_t d = 0; d < 10; ++d) {
          SamplingParams params;  // temperature 0 by default
          params.seed = seed;
          params.top_k = k;
          params.top_p = top_p;
          EXPECT_EQ(sample_token(logits.data(), 5, params, d), 1)
              << seed << " " << k << " " << top_p;
        }
  const std::vector<float> last = {-3.0f, -2.0f, -1.0f, 4.0f};
  EXPECT_EQ(sample_token(last.data(), 4, SamplingParams{}, 0), 3);
}

TEST(InferSampler, OutOfRangeParametersAreErrorsNamingThem) {
  const std::vector<float> logits = {0.0f, 1.0f};
  auto message = [&](const SamplingParams& p) -> std::string {
    try {
      sample_token(logits.data(), 2, p, 0);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  SamplingParams p;
  p.temperature = -0.1;
  EXPECT_NE(message(p).find("temperature"), std::string::npos);
  p = SamplingParams{};
  p.temperature = 1.0;
  p.top_p = 0.0;
  EXPECT_NE(message(p).find("top_p"), std::string::npos);
  p.top_p = 1.5;
  EXPECT_NE(message(p).find("top_p"), std::string::npos);
  p.top_p = 1.0;
  p.top_k = -1;
  EXPECT_NE(message(p).find("top_k"), std::string::npos);
  EXPECT_THROW(sample_token(logits.data(), 0, SamplingParams{}, 0), Error);
}

// Bias and penalties against the formula written out token by token.
TEST(InferSampler, LogitAdjustmentsFollowOpenAIsFormula) {
  const int64_t vocab = 11;
  std::vector<float> logits(vocab);
  for (int64_t v = 0; v < vocab; ++v) logits[v] = 4 * philox_uniform(4, 0, v) - 2;
  LogitAdjustments a;
  a.bias = {{3, 2.5f}, {7, -100.0f}, {0, 0.25f}};
  a.presence_penalty = 0.5;
  a.frequency_penalty = -0.3;
  a.repetition_penalty = 1.3;
  const std::vector<int32_t> prompt = {1, 2, 3}, generated = {3, 5, 5, 9, 5, 3};
  std::vector<float> got = logits;
  apply_logit_adjustments(got.data(), vocab, a, prompt, generated);
  for (int64_t v = 0; v < vocab; ++v) {
    double want = logits[v];
    const bool seen = v == 1 || v == 2 || v == 3 || v == 5 || v == 9;  // prompt or output
    if (seen) want = want > 0 ? want / 1.3 : want * 1.3;
    for (const auto& [t, b] : a.bias)
      if (t == v) want += b;
    int count = 0;
    for (int32_t t : generated) count += t == v;
    if (count > 0) want -= a.presence_penalty;
    want -= a.frequency_penalty * count;
    EXPECT_NEAR(got[v], want, 1e-5) << "token " << v;
  }
  auto message = [&](const LogitAdjustments& bad) -> std::string {
    try {
      check_logit_adjustments(bad, vocab);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(message(a), "");
  LogitAdjustments bad;
  bad.bias = {{11, 1.0f}};
  EXPECT_NE(message(bad).find("outside the vocabulary"), std::string::npos);
  bad.bias = {{2, 1.0f}, {2, 3.0f}};
  EXPECT_NE(message(bad).find("given twice"), std::string::npos);
  bad.bias = {{2, std::nanf("")}};
  EXPECT_NE(message(bad).find("not finite"), std::string::npos);
  bad.bias.clear();
  bad.frequency_penalty = INFINITY;
  EXPECT_NE(message(bad).find("frequency_penalty"), std::string::npos);
  bad.frequency_penalty = 0;
  bad.repetition_penalty = 0;
  EXPECT_NE(message(bad).find("repetition_penalty"), std::string::npos);
}

// log-softmax and the top alternatives against a full sort of the row (ties: lower id first).
TEST(InferSampler, TokenLogprobIsTheLogSoftmaxWithTheLargestAlternatives) {
  const int64_t vocab = 300;
  std::vector<float> logits(vocab);
  for (int64_t v = 0; v < vocab; ++v)
    logits[v] = 0.25f * std::round(16 * philox_uniform(9, 1, v));  // many exact ties
  const std::vector<double> p = softmax(logits, 1.0);
  std::vector<int32_t> order(vocab);
  for (int64_t v = 0; v < vocab; ++v) order[v] = static_cast<int32_t>(v);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  for (const int64_t top_n : {0, 1, 5, 20}) {
    for (const int32_t token : {0, 17, 299, order[0], order[250]}) {
      const TokenLogprob lp = token_logprob(logits.data(), vocab, token, top_n);
      EXPECT_EQ(lp.token, token);
      EXPECT_NEAR(lp.logprob, std::log(p[token]), 1e-5);
      ASSERT_EQ(static_cast<int64_t>(lp.top.size()), top_n);
      for (int64_t i = 0; i < top_n; ++i) {
        EXPECT_EQ(lp.top[i].first, order[i]) << "alternative " << i;
        EXPECT_NEAR(lp.top[i].second, std::log(p[order[i]]), 1e-5);
      }
    }
  }
  EXPECT_THROW(token_logprob(logits.data(), vocab, 300, 1), Error);
  EXPECT_THROW(token_logprob(logits.data(), vocab, 0, kMaxTopLogprobs + 1), Error);
}

}  // namespace
}  // namespace moex::infer
