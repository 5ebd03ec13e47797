#include "bench_model.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/generator.h"
#include "ops/device.h"
#include "ops/profile.h"
#include "train/optimizer.h"
#include "train/train_config.h"

namespace moex::bench {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t stream) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(philox_u32(17, stream, i) % vocab);
  return ids;
}

}  // namespace

std::string run_train_step_bench(const std::string& config_path, const std::string& device_flag,
                                 int warmup, int iters) {
  MOEX_CHECK(iters >= 1, "--iters must be >= 1, got ", iters);
  MOEX_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  const train::TrainConfig c = train::TrainConfig::from_file(config_path);
  const Device device =
      device_flag.empty() ? c.training.device : Device::parse(device_flag, "--device");
  model::Model m(c.model, device);
  m.init_weights(1);
  train::AdamW opt(m.params(), c.optimizer);
  const int64_t batch = c.training.micro_batch_size, seq = c.data.seq_len;
  const std::vector<int32_t> ids = random_tokens(batch * seq, c.model.vocab_size, 0);
  const std::vector<int32_t> targets = random_tokens(batch * seq, c.model.vocab_size, 1);
  std::vector<double> times;
  // Two more steps after the timed ones give the per-op time budget (CUDA events around each op).
  const int profiled = device.is_cuda() ? 2 : 0;
  for (int i = 0; i < warmup + iters + profiled; ++i) {
    if (i == warmup + iters) ops::profile_enable(true);
    ops::synchronize(device);
    const auto start = Clock::now();
    m.zero_grad();
    model::ForwardOptions fo;
    fo.training = true;
    fo.for_backward = true;
    fo.checkpoint_activations = c.training.activation_checkpointing;
    fo.step = static_cast<uint64_t>(i);
    m.forward(ids.data(), targets.data(), batch, seq, fo);
    m.backward();
    opt.step(m, c.optimizer.lr, i + 1);
    ops::synchronize(device);
    if (i >= warmup && i < warmup + iters) times.push_back(ms_since(start));
  }
  nlohmann::json budget = nlohmann::json::object();
  if (profiled > 0) {
    for (const auto& [name, ms] : ops::profile_report()) budget[name] = ms / profiled;
    ops::profile_enable(false);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double tokens_per_s = batch * seq / (median / 1000.0);
  // Model FLOPs per token: 6 x the active matmul weights, plus causal attention's score and value
  // products (forward 2 x T x H x Dh per layer, x3 with backward).
  const ModelConfig& mc = c.model;
  const double flops_per_token =
      6.0 * static_cast<double>(mc.active_matmul_parameters()) +
      6.0 * mc.num_layers * static_cast<double>(seq) * mc.num_heads * mc.head_dim;
  const ops::DeviceMemory mem = ops::device_memory(device);
  return nlohmann::json{{"bench", "train-step"},
                        {"config", config_path},
                        {"device", device.str()},
                        {"tokens", batch * seq},
                        {"step_ms", median},
                        {"tokens_per_s", tokens_per_s},
                        {"flops_per_token", flops_per_token},
                        // against the dense bf16 GEMM rate measured on the H200 (docs/results.md)
                        {"mfu", flops_per_token * tokens_per_s / 737e12},
                        {"peak_mem_gib", static_cast<double>(mem.peak) / (1u << 30)},
                        {"activation_gib", static_cast<double>(m.activation_bytes()) / (1u << 30)},
                        // GPU ms per step in each op (outermost ops; the rest of step_ms is
                        // launch gaps and host work)
                        {"op_ms", budget}}
      .dump();
}

std::string run_decode_bench(const std::string& config_path, int new_tokens) {
  MOEX_CHECK(new_tokens >= 1, "--tokens must be >= 1, got ", new_tokens);
  const train::TrainConfig c = train::TrainConfig::from_file(config_path);
  model::Model m(c.model);
  m.init_weights(1);
  const std::vector<int32_t> prompt = random_tokens(16, c.model.vocab_size, 2);
  model::KVCache cache = m.make_cache(1, 16 + new_tokens);
  std::vector<float> logits(static_cast<size_t>(c.model.vocab_size));
  auto start = Clock::now();
  m.forward_cached(prompt.data(), 1, 16, cache, logits.data());
  const double prefill_ms = ms_since(start);
  start = Clock::now();
  for (int i = 0; i < new_tokens; ++i) {
    const int32_t next =
        infer::sample_token(logits.data(), c.model.vocab_size, {}, static_cast<uint64_t>(i));
    m.forward_cached(&next, 1, 1, cache, logits.data());
  }
  const double decode_ms = ms_since(start);
  return nlohmann::json{
      {"bench", "decode"},        {"config", config_path},
      {"prompt_tokens", 16},      {"new_tokens", new_tokens},
      {"prefill_ms", prefill_ms}, {"decode_tokens_per_second", new_tokens / (decode_ms / 1000.0)}}
      .dump();
}

}  // namespace moex::bench
