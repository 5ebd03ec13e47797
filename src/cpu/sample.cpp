#include "cpu/sample.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/rng.h"

namespace moex::cpu {

namespace {

// std::max_element's answer (the first largest; a NaN is never larger, one in front wins) in two
// passes the compiler vectorizes: the largest value (`v > m ? v : m` is one max instruction),
// then its first index. Greedy decoding's whole sampling cost.
int64_t first_argmax(const float* x, int64_t n) {
  // 16 running maxima, one per lane (a select per lane vectorizes; one running value does not).
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (float& l : lane) l = x[0];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  float m = x[0];
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (const float l : lane) m = l > m ? l : m;
  for (i = 0; i < n; ++i)
    if (x[i] == m) return i;
  return 0;  // x[0] is NaN
}

}  // namespace

int32_t sample_row(const float* logits, int64_t vocab_size, double temperature, int64_t top_k,
                   double top_p, uint64_t seed, uint64_t draw) {
  if (temperature == 0.0) return static_cast<int32_t>(first_argmax(logits, vocab_size));

  std::vector<int32_t> order(static_cast<size_t>(vocab_size));
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep = top_k > 0 ? std::min(top_k, vocab_size) : vocab_size;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(static_cast<size_t>(keep));

  std::vector<double> probs(order.size());
  const double max_logit = logits[order[0]];
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i)
    sum += probs[i] = std::exp((logits[order[i]] - max_logit) / temperature);
  size_t kept = order.size();
  if (top_p < 1.0) {
    double cumulative = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (size_t i = 0; i < kept; ++i) total += probs[i];
  const double u = philox_uniform(seed, 0x5a3d1e, draw) * total;
  double acc = 0;
  for (size_t i = 0; i < kept; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[kept - 1];
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
