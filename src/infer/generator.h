// Autoregressive generation with a KV cache: prefill the prompt in one pass, then one token
// per step, stopping at a stop token or the token budget.
#pragma once

#include <functional>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"

namespace moex::infer {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
};

// Returns the new tokens (stop token included if one ended it). `on_token` sees each as it comes.
// One sequence over a dense KV cache, sampled on the host: the plain reference path.
std::vector<int32_t> generate(model::Model& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token = nullptr);

// The same tokens through the serving scheduler (infer/scheduler.h) with one sequence: paged KV
// cache, prompt prefilled in chunks, tokens sampled on the model's device and, on a GPU, decode
// steps replayed from a captured CUDA graph. What `moex generate` runs. Under tensor parallelism
// every tp rank calls it; rank 0 gets the tokens, the others run its steps and get none.
std::vector<int32_t> generate_paged(model::Model& model, const std::vector<int32_t>& prompt,
                                    const GenerateOptions& options,
                                    const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace moex::infer
