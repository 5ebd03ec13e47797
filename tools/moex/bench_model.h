// moex bench train-step | decode: whole-model throughput for a config's model (random weights,
// random tokens) on the CPU or a GPU, one JSON line each.
#pragma once

#include <string>
#include <vector>

#include "infer/sampler.h"

namespace moex::bench {

// Forward + backward + AdamW step on [micro_batch_size, seq_len] tokens on `device` ("" takes
// training.device), `warmup` untimed steps then the median of `iters` (>= 1): {"bench",
// "tokens_per_s", "step_ms", "mfu", "peak_mem_gib", ...}. offload (or the config's
// parallel.offload): master weights and Adam state in host memory (ZeRO-Offload). Each field of
// `dtypes`, "fp32" or "bf16", overrides the config's optimizer field of that name ("" keeps it).
struct StateDTypeFlags {
  std::string moments_dtype, grads_dtype, master_dtype;
};
std::string run_train_step_bench(const std::string& config_path, const std::string& device,
                                 int warmup, int iters, bool offload = false,
                                 const StateDTypeFlags& dtypes = {});
// For each batch size B: B sequences of a `prompt_len`-token prompt (prefilled in one step, timed
// as prefill_ms) decoding `new_tokens` (>= 2) tokens together (greedy, or drawn with `sampling`)
// through the serving scheduler (paged KV cache), on a config's model or a named
// shape ("mixtral4l"), random weights drawn once: one JSON line per B, {"bench", "ms_per_step",
// "tokens_per_s", "floor_ms", "frac_of_floor", ...}. The floor is the bytes a step must read
// (non-expert weights, the experts the batch is expected to touch, the KV cache) over the
// device's measured copy rate.
std::vector<std::string> run_decode_bench(const std::string& config_path, const std::string& shape,
                                          const std::string& device,
                                          const std::vector<int>& batches, int new_tokens,
                                          int prompt_len = 16,
                                          const infer::SamplingParams& sampling = {});

}  // namespace moex::bench
