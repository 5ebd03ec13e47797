#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "core/error.h"
#include "core/sampling_math.h"
#include "cpu/sample.h"

namespace moex::infer {

void check_sampling_params(const SamplingParams& p) {
  MOEX_CHECK(std::isfinite(p.temperature) && p.temperature >= 0,
             "temperature must be a finite number >= 0 (got ", p.temperature, ")");
  MOEX_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1] (got ", p.top_p, ")");
  MOEX_CHECK(p.top_k >= 0, "top_k must be >= 0 (got ", p.top_k, ")");
}

int32_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& p,
                     uint64_t draw) {
  MOEX_CHECK(vocab_size > 0 && vocab_size <= kMaxSampledVocab,
             "sample_token: vocab_size must be in [1, ", kMaxSampledVocab, "], got ", vocab_size);
  check_sampling_params(p);
  return cpu::sample_row(logits, vocab_size, p.temperature, p.top_k, p.top_p, p.seed, draw);
}

void check_logit_adjustments(const LogitAdjustments& a, int64_t vocab_size) {
  MOEX_CHECK(std::isfinite(a.presence_penalty), "presence_penalty must be finite");
  MOEX_CHECK(std::isfinite(a.frequency_penalty), "frequency_penalty must be finite");
  MOEX_CHECK(std::isfinite(a.repetition_penalty) && a.repetition_penalty > 0,
             "repetition_penalty must be > 0 (1: none), got ", a.repetition_penalty);
  std::vector<int32_t> tokens;
  tokens.reserve(a.bias.size());
  for (const auto& [token, bias] : a.bias) {
    MOEX_CHECK(token >= 0 && token < vocab_size, "logit_bias: token ", token,
               " is outside the vocabulary of ", vocab_size);
    MOEX_CHECK(std::isfinite(bias), "logit_bias: the bias of token ", token, " is not finite");
    tokens.push_back(token);
  }
  std::sort(tokens.begin(), tokens.end());
  const auto twice = std::adjacent_find(tokens.begin(), tokens.end());
  MOEX_CHECK(twice == tokens.end(), "logit_bias: token ", twice == tokens.end() ? 0 : *twice,
             " is given twice");
}

void apply_logit_adjustments(float* logits, int64_t vocab_size, const LogitAdjustments& a,
                             const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& generated) {
  if (a.repetition_penalty != 1) {
    std::vector<bool> seen(static_cast<size_t>(vocab_size), false);
    for (const auto* tokens : {&prompt, &generated})
      for (int32_t t : *tokens)
        if (t >= 0 && t < vocab_size) seen[static_cast<size_t>(t)] = true;
    const auto r = static_cast<float>(a.repetition_penalty);
    for (int64_t t = 0; t < vocab_size; ++t)
      if (seen[static_cast<size_t>(t)]) logits[t] = logits[t] > 0 ? logits[t] / r : logits[t] * r;
  }
  for (const auto& [token, bias] : a.bias) logits[token] += bias;
  if (a.presence_penalty == 0 && a.frequency_penalty == 0) return;
  std::unordered_map<int32_t, int64_t> counts;
  for (int32_t t : generated)
    if (t >= 0 && t < vocab_size) ++counts[t];
  for (const auto& [token, count] : counts)
    logits[token] -= static_cast<float>(a.presence_penalty + a.frequency_penalty * count);
}

TokenLogprob token_logprob(const float* logits, int64_t vocab_size, int32_t token, int64_t top_n) {
  MOEX_CHECK(vocab_size > 0 && token >= 0 && token < vocab_size, "token_logprob: token ", token,
             " outside the vocabulary of ", vocab_size);
  MOEX_CHECK(top_n >= 0 && top_n <= kMaxTopLogprobs, "top_logprobs must be in [0, ",
             kMaxTopLogprobs, "], got ", top_n);
  // log-softmax in double: max + log(sum exp(x - max)).
  float max = logits[0];
  for (int64_t v = 1; v < vocab_size; ++v) max = std::max(max, logits[v]);
  double sum = 0;
  for (int64_t v = 0; v < vocab_size; ++v) sum += std::exp(static_cast<double>(logits[v]) - max);
  const double log_z = max + std::log(sum);
  TokenLogprob out;
  out.token = token;
  out.logprob = static_cast<float>(logits[token] - log_z);
  // The top_n largest logits: a sorted list of at most top_n (token, logit), larger logit first,
  // lower id first on ties (ids arrive in increasing order, so a tie never displaces).
  std::vector<std::pair<int32_t, float>> best;
  best.reserve(static_cast<size_t>(top_n) + 1);
  for (int64_t v = 0; v < vocab_size && top_n > 0; ++v) {
    if (static_cast<int64_t>(best.size()) == top_n && !(logits[v] > best.back().second)) continue;
    auto at =
        std::find_if(best.begin(), best.end(), [&](const auto& b) { return logits[v] > b.second; });
    best.insert(at, {static_cast<int32_t>(v), logits[v]});
    if (static_cast<int64_t>(best.size()) > top_n) best.pop_back();
  }
  for (auto& [t, x] : best) x = static_cast<float>(x - log_z);
  out.top = std::move(best);
  return out;
}

}  // namespace moex::infer
