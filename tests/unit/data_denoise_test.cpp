// Span corruption (data/denoise.h): an example parses as documented in docs/data.md, the spans
// put back where their sentinels stand give the text again, the masked share is the configured
// rate, the mean span length is near the configured one, and examples are a pure function of
// (seed, stream).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/denoise.h"

namespace moex::data {
namespace {

// Special ids below 100, text ids from 1000, so the two never collide.
DenoiseTokens special_tokens(int max_spans) {
  DenoiseTokens t;
  t.task = 1;
  t.lang = 2;
  t.targets = 3;
  t.eos = 4;
  for (int i = 0; i < max_spans; ++i) t.sentinels.push_back(10 + i);
  return t;
}

std::vector<int32_t> text_of(size_t n) {
  std::vector<int32_t> text(n);
  for (size_t i = 0; i < n; ++i) text[i] = 1000 + static_cast<int32_t>(i);
  return text;
}

struct Parsed {
  std::vector<int32_t> restored;
  int64_t masked = 0, spans = 0;
};

// Reads an example as the documented layout says, independently of how it was written:
// <task> <lang> inputs... <targets> <span:0> s0... <span:1> s1... <eos>, and puts every span back
// at its sentinel.
Parsed parse(const std::vector<int32_t>& ex, const DenoiseTokens& t) {
  Parsed p;
  EXPECT_GE(ex.size(), 5u);
  EXPECT_EQ(ex[0], t.task);
  EXPECT_EQ(ex[1], t.lang);
  EXPECT_EQ(ex.back(), t.eos);
  const auto sep = std::find(ex.begin(), ex.end(), t.targets);
  EXPECT_NE(sep, ex.end());
  EXPECT_EQ(std::count(ex.begin(), ex.end(), t.targets), 1);
  const auto sentinel_index = [&](int32_t id) {
    const auto it = std::find(t.sentinels.begin(), t.sentinels.end(), id);
    return it == t.sentinels.end() ? -1 : static_cast<int>(it - t.sentinels.begin());
  };
  // Targets: sentinel i then span i, sentinels in order from 0.
  std::vector<std::vector<int32_t>> spans;
  for (auto it = sep + 1; it != ex.end() - 1; ++it) {
    const int s = sentinel_index(*it);
    if (s >= 0) {
      EXPECT_EQ(s, static_cast<int>(spans.size()));
      spans.emplace_back();
    } else {
      EXPECT_FALSE(spans.empty()) << "targets must start with a sentinel";
      if (!spans.empty()) spans.back().push_back(*it);
    }
  }
  // Inputs: text with sentinel i where span i was, sentinels in order.
  int next = 0;
  for (auto it = ex.begin() + 2; it != sep; ++it) {
    const int s = sentinel_index(*it);
    if (s < 0) {
      p.restored.push_back(*it);
      continue;
    }
    EXPECT_EQ(s, next++);
    if (s < static_cast<int>(spans.size())) {
      EXPECT_FALSE(spans[s].empty()) << "span " << s << " is empty";
      p.restored.insert(p.restored.end(), spans[s].begin(), spans[s].end());
      p.masked += static_cast<int64_t>(spans[s].size());
    }
  }
  EXPECT_EQ(next, static_cast<int>(spans.size()));
  p.spans = static_cast<int64_t>(spans.size());
  return p;
}

TEST(Denoise, SpansAreRecoverableAndTheMaskedShareIsTheRate) {
  DenoiseOptions o;  // 0.15, mean span 3, 16 sentinels
  const DenoiseTokens t = special_tokens(o.max_spans);
  for (size_t n : {2, 3, 5, 17, 64, 128, 400}) {
    const std::vector<int32_t> text = text_of(n);
    int64_t masked = 0, spans = 0;
    const int examples = 50;
    for (uint64_t stream = 0; stream < examples; ++stream) {
      const Parsed p = parse(span_corrupt(text.data(), n, o, t, 7, stream), t);
      ASSERT_EQ(p.restored, text) << "n " << n << " stream " << stream;
      EXPECT_GE(p.masked, 1);
      EXPECT_LT(p.masked, static_cast<int64_t>(n));
      EXPECT_LE(p.spans, o.max_spans);
      masked += p.masked;
      spans += p.spans;
    }
    const double rate = double(masked) / (double(examples) * n);
    if (n >= 64) {  // rounding to whole tokens dominates shorter texts
      EXPECT_NEAR(rate, 0.15, 0.01) << n;
      if (n <= 128) {  // 400 is capped at 16 spans
        EXPECT_NEAR(double(masked) / spans, 3.0, 0.5) << n;
      }
    }
  }
}

TEST(Denoise, OtherRatesAndSpanLengths) {
  DenoiseOptions o;
  o.noise_rate = 0.4;
  o.mean_span = 1.0;
  o.max_spans = 100;
  const DenoiseTokens t = special_tokens(o.max_spans);
  const std::vector<int32_t> text = text_of(100);
  const Parsed p = parse(span_corrupt(text.data(), text.size(), o, t, 1, 2), t);
  EXPECT_EQ(p.restored, text);
  EXPECT_EQ(p.masked, 40);
  EXPECT_EQ(p.spans, 40);  // mean span 1: every masked token is its own span
}

TEST(Denoise, DeterministicInSeedAndStream) {
  const DenoiseOptions o;
  const DenoiseTokens t = special_tokens(o.max_spans);
  const std::vector<int32_t> text = text_of(128);
  const auto a = span_corrupt(text.data(), 128, o, t, 5, 9);
  EXPECT_EQ(a, span_corrupt(text.data(), 128, o, t, 5, 9));
  EXPECT_NE(a, span_corrupt(text.data(), 128, o, t, 5, 10));
  EXPECT_NE(a, span_corrupt(text.data(), 128, o, t, 6, 9));
}

TEST(Denoise, DocumentsAreCutIntoChunks) {
  DenoiseOptions o;
  o.chunk_tokens = 128;
  const DenoiseTokens t = special_tokens(o.max_spans);
  const std::vector<int32_t> text = text_of(300);  // 128 + 128 + 44
  const auto examples = denoise_examples(text, o, t, 3, 4);
  ASSERT_EQ(examples.size(), 3u);
  std::vector<int32_t> restored;
  for (const auto& ex : examples) {
    const Parsed p = parse(ex, t);
    restored.insert(restored.end(), p.restored.begin(), p.restored.end());
  }
  EXPECT_EQ(restored, text);
  // A tail under 4 tokens makes no example.
  EXPECT_EQ(denoise_examples(text_of(258), o, t, 3, 4).size(), 2u);
}

TEST(Denoise, RefusesBadOptions) {
  DenoiseOptions o;
  o.noise_rate = 1.0;
  EXPECT_THROW(check_denoise_options(o), Error);
  o = DenoiseOptions{};
  o.mean_span = 0.5;
  EXPECT_THROW(check_denoise_options(o), Error);
  o = DenoiseOptions{};
  o.chunk_tokens = 3;
  EXPECT_THROW(check_denoise_options(o), Error);
  EXPECT_NO_THROW(check_denoise_options(DenoiseOptions{}));
  const std::vector<int32_t> one = text_of(1);
  EXPECT_THROW(span_corrupt(one.data(), 1, DenoiseOptions{}, special_tokens(16), 1, 1), Error);
}

}  // namespace
}  // namespace moex::data
