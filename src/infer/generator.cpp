#include "infer/generator.h"

#include <algorithm>
#include <climits>

#include "core/logging.h"
#include "infer/scheduler.h"

namespace moex::infer {

namespace {

// The checks both paths make; returns prompt + max_new_tokens.
int64_t check_request(const model::Model& model, const std::vector<int32_t>& prompt,
                      const GenerateOptions& options) {
  MOEX_CHECK(!prompt.empty(), "generate: the prompt is empty (no tokens)");
  MOEX_CHECK(options.max_new_tokens >= 0 && options.max_new_tokens <= INT32_MAX,
             "max_new_tokens must be in [0, 2^31 - 1] (got ", options.max_new_tokens, ")");
  check_sampling_params(options.sampling);
  const int64_t capacity = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  const ModelConfig& config = model.config();
  MOEX_CHECK(config.positions != PositionType::kLearned || capacity <= config.max_seq_len,
             "prompt + max_new_tokens (", capacity, ") exceeds the model's max_seq_len (",
             config.max_seq_len, ")");
  return capacity;
}

}  // namespace

std::vector<int32_t> generate(model::Model& model, const std::vector<int32_t>& prompt,
                              const GenerateOptions& options,
                              const std::function<void(int32_t)>& on_token) {
  const int64_t capacity = check_request(model, prompt, options);
  const ModelConfig& config = model.config();
  if (capacity > config.max_seq_len)  // the paged path's scheduler says the same
    MOEX_WARN("prompt + max_new_tokens (", capacity, ") runs past the model's max_seq_len (",
              config.max_seq_len, "): RoPE positions beyond the trained length");
  model::KVCache cache = model.make_cache(1, std::max<int64_t>(capacity, 1));
  std::vector<float> logits(static_cast<size_t>(config.vocab_size));
  model.forward_cached(prompt.data(), 1, static_cast<int64_t>(prompt.size()), cache, logits.data());
  std::vector<int32_t> out;
  for (int64_t i = 0; i < options.max_new_tokens; ++i) {
    const int32_t next =
        sample_token(logits.data(), config.vocab_size, options.sampling, static_cast<uint64_t>(i));
    out.push_back(next);
    if (on_token) on_token(next);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), next) !=
        options.stop_tokens.end())
      break;
    if (i + 1 == options.max_new_tokens) break;
    model.forward_cached(&next, 1, 1, cache, logits.data());
  }
  return out;
}

std::vector<int32_t> generate_paged(model::Model& model, const std::vector<int32_t>& prompt,
                                    const GenerateOptions& options,
                                    const std::function<void(int32_t)>& on_token) {
  const int64_t capacity = check_request(model, prompt, options);
  if (options.max_new_tokens == 0) return {};
  SchedulerOptions so;
  so.max_batch = 1;
  so.max_context = capacity;
  Scheduler scheduler(model, so);
  if (model.tensor_parallel().rank() != 0) {  // tp rank 0 decodes; this rank runs its steps
    scheduler.mirror();
    return {};
  }
  std::vector<int32_t> out;
  FinishReason reason = FinishReason::kCancelled;
  std::string error;
  Request request;
  request.prompt = prompt;
  request.max_tokens = options.max_new_tokens;
  request.sampling = options.sampling;
  request.stop_tokens = options.stop_tokens;
  request.on_token = [&](int32_t token) {
    out.push_back(token);
    if (on_token) on_token(token);
    return true;
  };
  request.on_finish = [&](FinishReason r, const std::string& message) {
    reason = r;
    error = message;
  };
  scheduler.submit(std::move(request));
  while (scheduler.step()) {
  }
  MOEX_CHECK(reason != FinishReason::kError, "generate: ", error);
  return out;
}

}  // namespace moex::infer
