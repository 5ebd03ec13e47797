// moex bench train-step | decode: whole-model CPU throughput for a config's model (random
// weights, random tokens), one JSON line each.
#pragma once

#include <string>

namespace moex::bench {

// Forward + backward + AdamW step on [micro_batch_size, seq_len] tokens, `warmup` untimed steps
// then the median of `iters` (>= 1): {"bench", "tokens_per_second", "step_ms"}.
std::string run_train_step_bench(const std::string& config_path, int warmup, int iters);
// Greedy decode of `new_tokens` (>= 1) with the KV cache after a 16-token prompt: {"bench",
// "prefill_ms", "decode_tokens_per_second"}.
std::string run_decode_bench(const std::string& config_path, int new_tokens);

}  // namespace moex::bench
