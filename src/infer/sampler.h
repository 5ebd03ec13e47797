// Next-token sampling from logits: greedy at temperature 0, else temperature, top-k and top-p
// (nucleus) filtering, drawn with the counter-based RNG so a seed repeats exactly. The per-row code
// is cpu::sample_row, which is also ops::sample_rows on the CPU (serving draws on the device).
#pragma once

#include <cstdint>

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

}  // namespace moex::infer
