#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace moex::infer {

void check_sampling_params(const SamplingParams& p) {
  MOEX_CHECK(p.temperature >= 0, "temperature must be >= 0 (got ", p.temperature, ")");
  MOEX_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1] (got ", p.top_p, ")");
  MOEX_CHECK(p.top_k >= 0, "top_k must be >= 0 (got ", p.top_k, ")");
}

int32_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& p,
                     uint64_t draw) {
  MOEX_CHECK(vocab_size > 0, "sample_token: vocab_size must be > 0");
  check_sampling_params(p);
  if (p.temperature == 0.0)
    return static_cast<int32_t>(std::max_element(logits, logits + vocab_size) - logits);

  std::vector<int32_t> order(static_cast<size_t>(vocab_size));
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep = p.top_k > 0 ? std::min(p.top_k, vocab_size) : vocab_size;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(static_cast<size_t>(keep));

  std::vector<double> probs(order.size());
  const double max_logit = logits[order[0]];
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i)
    sum += probs[i] = std::exp((logits[order[i]] - max_logit) / p.temperature);
  size_t kept = order.size();
  if (p.top_p < 1.0) {
    double cumulative = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= p.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (size_t i = 0; i < kept; ++i) total += probs[i];
  const double u = philox_uniform(p.seed, 0x5a3d1e, draw) * total;
  double acc = 0;
  for (size_t i = 0; i < kept; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[kept - 1];
}

}  // namespace moex::infer
