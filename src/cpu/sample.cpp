#include "cpu/sample.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "core/sampling_math.h"

namespace moex::cpu {

namespace {

// The first largest logit, NaNs passed over (they come last in the sampling order, as on the
// GPU; a row of NaNs gives 0), in two passes the compiler vectorizes: the largest value
// (`v > m ? v : m` is one max instruction), then its first index. Greedy decoding's whole
// sampling cost.
int64_t first_argmax(const float* x, int64_t n) {
  // 16 running maxima, one per lane (a select per lane vectorizes; one running value does not).
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (float& l : lane) l = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  float m = -INFINITY;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (const float l : lane) m = l > m ? l : m;
  for (i = 0; i < n; ++i)
    if (x[i] == m) return i;
  return 0;  // every logit is NaN
}

// A token of the row: its order key (core/sampling_math.h) and fixed-point weight.
struct Token {
  uint64_t key;
  uint64_t weight;
};

uint64_t median_key(uint64_t a, uint64_t b, uint64_t c) {
  return std::max(std::min(a, b), std::min(std::max(a, b), c));
}

enum class Goal { kTopP, kDraw };  // the running weight must reach (>=) or pass (>) the target

// Of tokens [0, n), the first in key order (largest first) at which the running weight reaches
// target (kTopP: >=; kDraw: >, strictly); the last in order when it never does. Reorders the
// range so that every token before the returned position comes before it in order and every token
// after it comes after it (a quickselect over weighted partitions, O(n) expected, where a sort
// would be O(n log n)), and sets *through to the running total through the returned token.
size_t select_first(std::vector<Token>& tokens, size_t n, Goal goal, uint64_t target,
                    uint64_t* through) {
  const bool strict = goal == Goal::kDraw;
  const auto reached = [strict, target](uint64_t total) {
    return strict ? total > target : total >= target;
  };
  size_t lo = 0, hi = n;  // the answer lies in [lo, hi); [0, lo) precede it, [hi, n) follow
  uint64_t above = 0;     // the running total over [0, lo)
  for (;;) {
    const auto last = tokens.begin() + static_cast<ptrdiff_t>(hi);
    const uint64_t pivot =
        median_key(tokens[lo].key, tokens[lo + (hi - lo) / 2].key, tokens[hi - 1].key);
    const auto mid = std::partition(tokens.begin() + static_cast<ptrdiff_t>(lo), last,
                                    [pivot](const Token& t) { return t.key > pivot; });
    uint64_t before = above;
    for (auto t = tokens.begin() + static_cast<ptrdiff_t>(lo); t != mid; ++t) before += t->weight;
    const size_t at = static_cast<size_t>(mid - tokens.begin());
    std::iter_swap(mid,
                   std::find_if(mid, last, [pivot](const Token& t) { return t.key == pivot; }));
    if (at > lo && reached(before)) {
      hi = at;  // reached among the tokens ahead of the pivot
      continue;
    }
    above = before + mid->weight;
    if (reached(above) || at + 1 == hi) {  // the pivot, or the last token in order
      *through = above;
      return at;
    }
    lo = at + 1;
  }
}

}  // namespace

int32_t sample_row(const float* logits, int64_t vocab_size, double temperature, int64_t top_k,
                   double top_p, uint64_t seed, uint64_t draw) {
  if (temperature == 0.0) return static_cast<int32_t>(first_argmax(logits, vocab_size));

  thread_local std::vector<Token> tokens;  // kept between calls: a fresh one costs page faults
  tokens.resize(static_cast<size_t>(vocab_size));
  uint64_t first = 0;
  for (int64_t i = 0; i < vocab_size; ++i) {
    tokens[i] = {sampling_order_key(logits[i], i), 0};
    first = std::max(first, tokens[i].key);
  }
  uint64_t through = 0;
  size_t kept = tokens.size();
  if (top_k > 0 && top_k < vocab_size) {  // the top_k largest keys to the front
    kept = static_cast<size_t>(top_k);
    const auto by_key = [](const Token& a, const Token& b) { return a.key > b.key; };
    // A few: a heap of them over one pass, whose branch is rarely taken. Many: a quickselect.
    if (top_k <= std::max<int64_t>(64, vocab_size / 64))
      std::partial_sort(tokens.begin(), tokens.begin() + top_k, tokens.end(), by_key);
    else
      std::nth_element(tokens.begin(), tokens.begin() + top_k - 1, tokens.end(), by_key);
  }

  // Fixed-point weights of the kept tokens, summed exactly (core/sampling_math.h).
  const float max_logit = logits[sampling_key_id(first)];
  const float inverse_t = sampling_inverse_temperature(temperature);
  uint64_t total = 0;
  if (kept == tokens.size()) {  // still in id order: a contiguous pass over the logits
    for (size_t i = 0; i < kept; ++i)
      total += tokens[i].weight = sampling_weight(logits[i], max_logit, inverse_t);
  } else {
    for (size_t i = 0; i < kept; ++i)
      total += tokens[i].weight =
          sampling_weight(logits[sampling_key_id(tokens[i].key)], max_logit, inverse_t);
  }
  if (top_p < 1.0)
    kept = select_first(tokens, kept, Goal::kTopP, top_p_target(top_p, total), &total) + 1;
  const uint64_t target = draw_target(sampling_uniform(seed, draw), total);
  return sampling_key_id(tokens[select_first(tokens, kept, Goal::kDraw, target, &through)].key);
}

void sample_rows(const float* x, int64_t rows, int64_t cols, const int32_t* params, int32_t* out) {
  struct {
    double temperature, top_p;
    int64_t top_k;
    uint64_t seed, draw;
  } p;
  static_assert(sizeof(p) == 10 * sizeof(int32_t), "10 words a row");
  for (int64_t s = 0; s < rows; ++s) {
    std::memcpy(&p, params + s * 10, sizeof(p));  // the words need not be 8-byte aligned
    out[s] = sample_row(x + s * cols, cols, p.temperature, p.top_k, p.top_p, p.seed, p.draw);
  }
}

}  // namespace moex::cpu
