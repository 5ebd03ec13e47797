// Next-token sampling from logits: greedy at temperature 0, else temperature, top-k and top-p
// (nucleus) filtering, drawn with the counter-based RNG so a seed repeats exactly. The per-row code
// is cpu::sample_row, which is also ops::sample_rows on the CPU (serving draws on the device).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace moex::infer {

struct SamplingParams {
  double temperature = 0.0;  // 0: greedy (argmax, lowest id wins ties)
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
};

// Errors name the parameter that is out of range (temperature < 0, top_p outside (0, 1], top_k <
// 0).
void check_sampling_params(const SamplingParams& params);

// `draw` is the index of this draw in the sequence (the RNG counter).
int32_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& params,
                     uint64_t draw);

// Changes to a row's logits before it is sampled, in this order:
//   repetition_penalty r (transformers' and vLLM's): every token t seen in the prompt or the
//     output so far has logit[t] / r when it is positive, logit[t] * r otherwise;
//   OpenAI's logit_bias, presence_penalty and frequency_penalty:
//     logit[t] += bias(t) - presence_penalty * (c_t > 0) - frequency_penalty * c_t, c_t = how often
//     t occurs among the tokens generated so far (the prompt does not count).
struct LogitAdjustments {
  std::vector<std::pair<int32_t, float>> bias;  // (token, added to its logit); tokens unique
  double presence_penalty = 0;
  double frequency_penalty = 0;
  double repetition_penalty = 1;  // > 0; 1: none
  bool empty() const {
    return bias.empty() && presence_penalty == 0 && frequency_penalty == 0 &&
           repetition_penalty == 1;
  }
};
// Errors name the field: a bias token outside [0, vocab_size) or given twice, a bias or a penalty
// that is not finite, a repetition_penalty that is not > 0.
void check_logit_adjustments(const LogitAdjustments& adjustments, int64_t vocab_size);
void apply_logit_adjustments(float* logits, int64_t vocab_size, const LogitAdjustments& adjustments,
                             const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& generated);

// A token's log-probability under the model: log-softmax of the raw logits (before bias,
// penalties, temperature and top-k/top-p, as vLLM reports them), with the top_n most likely tokens
// of the same row, most likely first (ties: lower id first).
constexpr int64_t kMaxTopLogprobs = 20;
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // [top_n] (token, logprob)
};
TokenLogprob token_logprob(const float* logits, int64_t vocab_size, int32_t token, int64_t top_n);

}  // namespace moex::infer
