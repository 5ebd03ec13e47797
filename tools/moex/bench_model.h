// moex bench train-step | decode: whole-model throughput for a config's model (random weights,
// random tokens) on the CPU or a GPU, one JSON line each.
#pragma once

#include <string>

namespace moex::bench {

// Forward + backward + AdamW step on [micro_batch_size, seq_len] tokens on `device` ("" takes
// training.device), `warmup` untimed steps then the median of `iters` (>= 1): {"bench",
// "tokens_per_s", "step_ms", "mfu", "peak_mem_gib", ...}.
std::string run_train_step_bench(const std::string& config_path, const std::string& device,
                                 int warmup, int iters);
// Greedy decode of `new_tokens` (>= 1) with the KV cache after a 16-token prompt: {"bench",
// "prefill_ms", "decode_tokens_per_second"}.
std::string run_decode_bench(const std::string& config_path, int new_tokens);

}  // namespace moex::bench
