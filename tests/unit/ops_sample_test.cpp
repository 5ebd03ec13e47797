// ops::sample_rows on the CPU against a naive reference written here (sort the whole vocabulary,
// softmax of logit / T, keep the first top_k, then the fewest reaching top_p, and walk the running
// sum to u times the kept total with the same counter RNG draw), on random logits with and without
// ties and at the edges (top_k 1 and past the vocabulary, a tiny top_p, very small and very large
// temperatures); mixed greedy and sampled rows in one call, agreement with the host sampler
// (infer::sample_token is the same per-row code), and errors naming the bad parameter.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "core/sampling_math.h"
#include "cpu_kernel_checks.h"
#include "ops/argmax.h"
#include "ops/sample.h"

namespace moex {
namespace {

// The reference: a full sort of the vocabulary, then the sampler's definition in fp64
// (weights added in order until they reach top_p times the kept sum; the draw walks the nucleus in
// order), with the one rule of its fixed-point weights (core/sampling_math.h) that
// changes tokens by more than rounding: a token under 2^-40 of the top token's weight weighs 0.
// So even tied logits at an exact top_p boundary agree (a cold row's e^-40 tails would otherwise
// push the nucleus one token further). The sampler's weights are fp32 exponentials (within ~1e-6)
// in units of 2^-40; a token could differ from this reference only where a running sum lies that
// close to a boundary, which these fixed rows do not.
int32_t naive_sample(const std::vector<float>& logits, const ops::SampleParams& p) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  if (p.temperature == 0) return order[0];
  const int64_t keep = p.top_k == 0 ? vocab : std::min(p.top_k, vocab);
  std::vector<double> w(static_cast<size_t>(keep));
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    w[i] = std::exp((static_cast<double>(logits[order[i]]) - logits[order[0]]) / p.temperature);
    if (w[i] < std::ldexp(1.0, -40)) w[i] = 0;  // the sampler's fixed point ends at 2^-40
    sum += w[i];
  }
  int64_t nucleus = keep;
  double mass = 0;
  for (int64_t i = 0; i < keep && p.top_p < 1; ++i) {
    mass += w[i];  // the mass w / sum reaches top_p; exact for tied weights of 1
    if (mass >= p.top_p * sum) {
      nucleus = i + 1;
      break;
    }
  }
  const double total = std::accumulate(w.begin(), w.begin() + nucleus, 0.0);
  const double u = static_cast<double>(philox_uniform(p.seed, 0x5a3d1e, p.draw)) * total;
  double running = 0;
  for (int64_t i = 0; i < nucleus; ++i)
    if ((running += w[i]) > u) return order[i];
  return order[nucleus - 1];
}

// rows x vocab logits in [-scale, scale]; with `ties`, rounded to a few levels, so most logits
// equal others and the lower id must come first.
std::vector<float> random_logits(int64_t rows, int64_t vocab, uint64_t seed, float scale,
                                 bool ties) {
  std::vector<float> x(static_cast<size_t>(rows * vocab));
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = scale * (2.0f * philox_uniform(seed, 0x10, i) - 1.0f);
    if (ties) x[i] = std::round(x[i] * 2.0f / scale) * scale / 2.0f;  // 5 levels
  }
  return x;
}

std::vector<int32_t> run(const std::vector<float>& logits, int64_t vocab,
                         const std::vector<ops::SampleParams>& params) {
  const int64_t rows = static_cast<int64_t>(params.size());
  Tensor x = Tensor::empty(Shape{rows, vocab}, DType::kF32);
  std::copy(logits.begin(), logits.end(), x.data<float>());
  Tensor p = Tensor::empty(Shape{rows, ops::kSampleParamWords}, DType::kI32);
  for (int64_t r = 0; r < rows; ++r)
    ops::write_sample_params(params[r], p.data<int32_t>() + r * ops::kSampleParamWords);
  Tensor out = Tensor::empty(Shape{rows}, DType::kI32);
  ops::sample_rows(x, p, out);
  return std::vector<int32_t>(out.data<int32_t>(), out.data<int32_t>() + rows);
}

ops::SampleParams params(double temperature, int64_t top_k, double top_p, uint64_t seed,
                         uint64_t draw) {
  ops::SampleParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  p.draw = draw;
  return p;
}

// Every row of a call against the reference, row by row.
void expect_reference(const std::vector<float>& logits, int64_t vocab,
                      const std::vector<ops::SampleParams>& ps, const char* what) {
  const std::vector<int32_t> got = run(logits, vocab, ps);
  for (size_t r = 0; r < ps.size(); ++r) {
    const std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    EXPECT_EQ(got[r], naive_sample(row, ps[r]))
        << what << " row " << r << ": T " << ps[r].temperature << " top_k " << ps[r].top_k
        << " top_p " << ps[r].top_p << " seed " << ps[r].seed << " draw " << ps[r].draw;
  }
}

// The fixed-point weight against the fp64 exponential: within fp32 rounding of the exponent (its
// product with 1/T is rounded once), 0 from 28 temperatures below the top, 2^40 at the top (also
// when the top is -inf), never increasing as the logit falls; and the two targets' edges.
TEST(OpsSample, WeightsAreTheFixedPointExponential) {
  const double one = std::ldexp(1.0, 40);
  for (const double t : {0.05, 0.7, 1.0, 3.0}) {
    const float top = 2.5f, inverse_t = sampling_inverse_temperature(t);
    uint64_t last = sampling_weight(top, top, inverse_t);
    EXPECT_EQ(last, uint64_t{1} << 40);
    for (int i = 1; i <= 4000; ++i) {
      const float v = top - static_cast<float>(i) * static_cast<float>(t) * 0.0075f;
      const uint64_t w = sampling_weight(v, top, inverse_t);
      const double x = (static_cast<double>(v) - top) / t, exact = one * std::exp(x);
      if (x < -28.001) {
        EXPECT_EQ(w, 0u) << "T " << t << " logit " << v;
      } else if (x > -27.999) {
        EXPECT_NEAR(static_cast<double>(w), exact, exact * 4e-6 + 1) << "T " << t << " logit " << v;
      }
      EXPECT_LE(w, last) << "T " << t << " logit " << v;
      last = w;
    }
  }
  EXPECT_EQ(sampling_weight(-INFINITY, -INFINITY, 1.0f), uint64_t{1} << 40);
  EXPECT_EQ(sampling_weight(NAN, 1.0f, 1.0f), 0u);
  const uint64_t total = (uint64_t{1} << 40) * 3 + 12345;
  EXPECT_EQ(top_p_target(1.0, total), total);
  EXPECT_EQ(top_p_target(1e-30, total), 1u);
  EXPECT_EQ(top_p_target(0.5, 10), 5u);
  EXPECT_EQ(top_p_target(0.51, 10), 6u);
  EXPECT_EQ(draw_target(0.99999994f, 1), 0u);
  EXPECT_EQ(draw_target(0.5f, 10), 5u);
  EXPECT_EQ(draw_target(0.5f, 0), 0u);
  EXPECT_LT(draw_target(0.99999994f, total), total);
}

TEST(OpsSample, EqualsANaiveSortOnRandomLogits) {
  const int64_t vocab = 500;
  const double temperatures[] = {0.0, 0.05, 0.7, 1.0, 2.5};
  const int64_t top_ks[] = {0, 1, 3, 40, 499, 500, 10000};
  const double top_ps[] = {1.0, 0.9, 0.5, 1e-9};
  std::vector<ops::SampleParams> ps;
  uint64_t draw = 0;
  for (double t : temperatures)
    for (int64_t k : top_ks)
      for (double tp : top_ps) {
        ps.push_back(params(t, k, tp, 1234 + draw % 7, draw));
        ++draw;
      }
  const int64_t rows = static_cast<int64_t>(ps.size());
  for (bool ties : {false, true}) {
    expect_reference(random_logits(rows, vocab, 5, 4.0f, ties), vocab, ps,
                     ties ? "ties" : "distinct");
    expect_reference(random_logits(rows, vocab, 6, 30.0f, ties), vocab, ps,
                     ties ? "wide ties" : "wide");
  }
}

TEST(OpsSample, DrawsFollowTheSeedAndTheCounter) {
  const int64_t vocab = 64, rows = 200;
  std::vector<ops::SampleParams> ps;
  for (int64_t r = 0; r < rows; ++r) ps.push_back(params(1.0, 0, 1.0, 9 + r % 3, r));
  std::vector<float> logits = random_logits(1, vocab, 7, 1.0f, false), all;
  for (int64_t r = 0; r < rows; ++r) all.insert(all.end(), logits.begin(), logits.end());
  expect_reference(all, vocab, ps, "one row, many draws");
  // Flat enough logits give many tokens over 200 draws: the counter is used.
  const std::vector<int32_t> got = run(all, vocab, ps);
  std::vector<int32_t> distinct = got;
  std::sort(distinct.begin(), distinct.end());
  EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 20);
}

TEST(OpsSample, EdgesOfTheParameters) {
  const int64_t vocab = 300;
  std::vector<float> x = random_logits(1, vocab, 8, 3.0f, false);
  x[17] = x[250] = 6.0f;  // the largest logit twice: 17 comes first
  const int32_t first = 17;
  std::vector<ops::SampleParams> ps;
  std::vector<float> all;
  const auto add = [&](const ops::SampleParams& p) {
    ps.push_back(p);
    all.insert(all.end(), x.begin(), x.end());
  };
  for (uint64_t d = 0; d < 8; ++d) {
    add(params(1.0, 1, 1.0, 3, d));     // top_k 1: the first token
    add(params(1.0, 0, 1e-12, 3, d));   // a tiny nucleus: the first token
    add(params(0.0, 5, 0.5, 3, d));     // temperature 0: greedy, whatever else
    add(params(1e-6, 0, 1.0, 3, d));    // a cold softmax: only the two tied maxima count
    add(params(1e6, 0, 1.0, 3, d));     // a hot one: close to uniform
    add(params(0.8, 1000, 1.0, 3, d));  // top_k past the vocabulary: no limit
    add(params(0.8, 0, 1.0, 3, d));     // ... as with none
  }
  expect_reference(all, vocab, ps, "edges");
  const std::vector<int32_t> got = run(all, vocab, ps);
  for (size_t r = 0; r < ps.size(); r += 7) {
    EXPECT_EQ(got[r], first);
    EXPECT_EQ(got[r + 1], first);
    EXPECT_EQ(got[r + 2], first);
    EXPECT_TRUE(got[r + 3] == 17 || got[r + 3] == 250) << got[r + 3];
    EXPECT_EQ(got[r + 5], got[r + 6]);
  }
}

// NaN logits come after every other logit and weigh 0 (as on the GPU, where they sort below
// -inf): greedy passes over them even in front, sampling never draws them, and a row of NaNs
// gives its first token.
TEST(OpsSample, NanLogitsAreNeverChosen) {
  const int64_t vocab = 6;
  const std::vector<float> row = {NAN, 1.0f, NAN, 2.0f, -5.0f, NAN};
  std::vector<float> all;
  std::vector<ops::SampleParams> ps;
  for (uint64_t d = 0; d < 40; ++d) {
    ps.push_back(d == 0 ? ops::SampleParams{}
                        : params(d % 2 ? 1.0 : 4.0, 0, d % 3 ? 1.0 : 0.7, 5, d));
    all.insert(all.end(), row.begin(), row.end());
  }
  const std::vector<int32_t> got = run(all, vocab, ps);
  EXPECT_EQ(got[0], 3);
  for (size_t r = 0; r < got.size(); ++r)
    EXPECT_TRUE(got[r] == 1 || got[r] == 3 || got[r] == 4) << "row " << r << ": " << got[r];
  const std::vector<float> nans(vocab, NAN);
  EXPECT_EQ(run(nans, vocab, {ops::SampleParams{}}), std::vector<int32_t>{0});
  EXPECT_EQ(run(nans, vocab, {params(1.0, 0, 0.5, 5, 1)}), std::vector<int32_t>{0});
}

TEST(OpsSample, GreedyRowsAreTheArgmaxBesideSampledRows) {
  const int64_t vocab = 1000, rows = 6;
  const std::vector<float> logits = random_logits(rows, vocab, 9, 5.0f, true);
  std::vector<ops::SampleParams> ps;
  for (int64_t r = 0; r < rows; ++r)
    ps.push_back(r % 2 == 0 ? ops::SampleParams{} : params(0.9, 50, 0.95, 21, r));
  const std::vector<int32_t> got = run(logits, vocab, ps);
  Tensor x = Tensor::empty(Shape{rows, vocab}, DType::kF32);
  std::copy(logits.begin(), logits.end(), x.data<float>());
  Tensor argmax = Tensor::empty(Shape{rows}, DType::kI32);
  ops::argmax_rows(x, argmax);
  for (int64_t r = 0; r < rows; r += 2) EXPECT_EQ(got[r], argmax.data<int32_t>()[r]) << r;
  expect_reference(logits, vocab, ps, "mixed");
}

TEST(OpsSample, BadArgumentsNameTheArgument) {
  const Tensor x = Tensor::zeros(Shape{2, 3}, DType::kF32);
  const auto call = [&](const ops::SampleParams& bad) {
    Tensor p = Tensor::empty(Shape{2, ops::kSampleParamWords}, DType::kI32);
    ops::write_sample_params(ops::SampleParams{}, p.data<int32_t>());
    ops::write_sample_params(bad, p.data<int32_t>() + ops::kSampleParamWords);
    ops::sample_rows(x, p, Tensor::empty(Shape{2}, DType::kI32));
  };
  testing::expect_error_naming([&] { call(params(-1.0, 0, 1.0, 0, 0)); },
                               {"sample_rows", "row 1", "temperature"});
  testing::expect_error_naming([&] { call(params(1.0, 0, 0.0, 0, 0)); }, {"row 1", "top_p"});
  testing::expect_error_naming([&] { call(params(1.0, 0, 1.5, 0, 0)); }, {"top_p"});
  testing::expect_error_naming([&] { call(params(1.0, -2, 1.0, 0, 0)); }, {"row 1", "top_k"});
  EXPECT_NO_THROW(call(params(1.0, 2, 0.5, 0, 0)));
  const Tensor p = Tensor::zeros(Shape{2, ops::kSampleParamWords}, DType::kI32);
  testing::expect_error_naming(
      [&] { ops::sample_rows(x, p, Tensor::empty(Shape{2}, DType::kF32)); }, {"out"});
  testing::expect_error_naming(
      [&] {
        ops::sample_rows(x, Tensor::zeros(Shape{2, 3}, DType::kI32),
                         Tensor::empty(Shape{2}, DType::kI32));
      },
      {"params"});
  testing::expect_error_naming(
      [&] { ops::sample_rows(Tensor::zeros(Shape{6}, DType::kF32), p, Tensor()); },
      {"sample_rows"});
}

}  // namespace
}  // namespace moex
