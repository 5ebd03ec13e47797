#include "bench_model.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/arena.h"
#include "core/error.h"
#include "core/json_reader.h"
#include "core/rng.h"
#include "core/timer.h"
#include "infer/generator.h"
#include "infer/scheduler.h"
#include "moe/moe_layer_dispatch.h"
#include "ops/device.h"
#include "ops/elementwise.h"
#include "ops/profile.h"
#include "train/optimizer.h"
#include "train/train_config.h"

namespace moex::bench {
namespace {

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t stream) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(philox_u32(17, stream, i) % vocab);
  return ids;
}

// The per-op time (ops/profile.h: GPU events, CPU wall time) since profiling was enabled, per step
// over `steps` steps, as {"op": ms}; profiling ends.
nlohmann::json profile_budget(double steps) {
  nlohmann::json budget = nlohmann::json::object();
  for (const auto& [name, ms] : ops::profile_report()) budget[name] = ms / std::max(steps, 1.0);
  ops::profile_enable(false);
  return budget;
}

}  // namespace

std::string run_train_step_bench(const std::string& config_path, const std::string& device_flag,
                                 int warmup, int iters, bool offload,
                                 const StateDTypeFlags& dtypes) {
  MOEX_CHECK(iters >= 1, "--iters must be >= 1, got ", iters);
  MOEX_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  train::TrainConfig c = train::TrainConfig::from_file(config_path);
  for (const auto& [flag, field] : {std::pair{&dtypes.moments_dtype, &c.optimizer.moments_dtype},
                                    std::pair{&dtypes.grads_dtype, &c.optimizer.grads_dtype},
                                    std::pair{&dtypes.master_dtype, &c.optimizer.master_dtype}})
    if (!flag->empty()) *field = train::OptimizerConfig::precision_of(*flag);
  const Device device =
      device_flag.empty() ? c.training.device : Device::parse(device_flag, "--device");
  offload = offload || c.parallel.offload;
  MOEX_CHECK(!offload || device.is_cuda(), "--offload needs --device cuda");
  model::Model m(c.model, device, nullptr, {}, offload,
                 model::ModelState{c.optimizer.master_dtype, c.optimizer.grads_dtype});
  m.init_weights(1, false);
  train::AdamW opt(m.params(), c.optimizer, offload, c.parallel.tile_elements);
  // Weights, gradients and moments: what the GPU holds before the first step (on the CPU the
  // process's resident memory then).
  const size_t state_bytes = ops::device_memory(device).in_use;
  const int64_t batch = c.training.micro_batch_size, seq = c.data.seq_len;
  const std::vector<int32_t> ids = random_tokens(batch * seq, c.model.vocab_size, 0);
  const std::vector<int32_t> targets = random_tokens(batch * seq, c.model.vocab_size, 1);
  std::vector<double> times;
  // Two more steps after the timed ones give the per-op time budget (ops/profile.h).
  const int profiled = 2;
  uint64_t generation0 = 0, generation1 = 0;      // buffer_generation() around the timed steps
  train::AdamW::OffloadTimes offload0, offload1;  // the same for the offload step's phases
  // The first step's memory after each phase (GiB in use then, and the peak so far): where the
  // peak is reached.
  nlohmann::json memory_phases = nlohmann::json::object();
  auto note_memory = [&](int i, const char* phase) {
    if (i != 0) return;
    ops::synchronize(device);
    const ops::DeviceMemory now = ops::device_memory(device);
    memory_phases[phase] = {{"in_use_gib", static_cast<double>(now.in_use) / (1u << 30)},
                            {"peak_gib", static_cast<double>(now.peak) / (1u << 30)}};
  };
  for (int i = 0; i < warmup + iters + profiled; ++i) {
    if (i == warmup) {
      generation0 = buffer_generation();
      offload0 = opt.offload_times();
    }
    if (i == warmup + iters) ops::profile_enable(true);
    ops::synchronize(device);
    const auto start = SteadyClock::now();
    m.zero_grad();
    model::ForwardOptions fo;
    fo.training = true;
    fo.for_backward = true;
    fo.checkpoint_activations = c.training.activation_checkpointing;
    fo.step = static_cast<uint64_t>(i);
    m.forward(ids.data(), targets.data(), batch, seq, fo);
    note_memory(i, "forward");
    m.backward();
    note_memory(i, "backward");
    opt.step(m, c.optimizer.lr, i + 1);
    note_memory(i, "step");
    ops::synchronize(device);
    if (i >= warmup && i < warmup + iters) times.push_back(ms_since(start));
    if (i == warmup + iters - 1) {
      generation1 = buffer_generation();
      offload1 = opt.offload_times();
    }
  }
  const nlohmann::json budget = profiled > 0 ? profile_budget(profiled) : nlohmann::json::object();
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
  // Largest expert load over the mean, over the MoE layers of the last step (E x C over T x k):
  // what padding every expert to the largest load costs (bucketed rows cost less).
  double computed = 0, routed = 0;
  for (const auto& [layer, st] : m.moe_stats()) {
    const MoEConfig& e = c.model.layers[layer].moe_config;
    computed += static_cast<double>(st.capacity) * e.num_experts;
    routed += static_cast<double>(batch * seq) * e.top_k;
  }
  return nlohmann::json{
      {"bench", "train-step"},
      {"moe_max_over_mean_load", routed > 0 ? computed / routed : 0.0},
      {"config", config_path},
      {"device", device.str()},
      {"offload", offload},
      {"moments_dtype", train::OptimizerConfig::precision_name(c.optimizer.moments_dtype)},
      {"grads_dtype", train::OptimizerConfig::precision_name(c.optimizer.grads_dtype)},
      {"master_dtype", train::OptimizerConfig::precision_name(c.optimizer.master_dtype)},
      {"parameters", mc.num_parameters()},
      {"tokens", batch * seq},
      {"step_ms", median},
      {"tokens_per_s", tokens_per_s},
      {"flops_per_token", flops_per_token},
      // against the dense bf16 GEMM rate measured on the H200 (docs/results.md)
      {"mfu", flops_per_token * tokens_per_s / 737e12},
      // the GPU's peak tensor memory; on the CPU, the process's peak resident memory
      {"peak_mem_gib", static_cast<double>(mem.peak) / (1u << 30)},
      {"state_gib", static_cast<double>(state_bytes) / (1u << 30)},
      {"memory_phases", memory_phases},
      {"activation_gib", static_cast<double>(m.activation_bytes()) / (1u << 30)},
      // the GPU MoE layers' kept rows, and the row scratch they share
      {"moe_kept_gib", static_cast<double>(m.moe_kept_bytes()) / (1u << 30)},
      // kept rows in gradient memory instead (docs/gpu-model.md §Kept rows in gradient memory)
      {"moe_lent_gib", static_cast<double>(m.lent_gradient_bytes()) / (1u << 30)},
      {"moe_scratch_gib",
       static_cast<double>(device.is_cuda() ? moe_device_scratch_bytes(device.ordinal) : 0) /
           (1u << 30)},
      // long-lived buffers replaced (grown, re-planned) per timed step
      {"buffer_moves_per_step", static_cast<double>(generation1 - generation0) / iters},
      // GPU ms per step in each op (outermost ops; the rest of step_ms is
      // launch gaps and host work)
      {"op_ms", budget},
      // offload: the host's ms per timed step in each phase of the optimizer step
      {"offload_ms",
       {{"norm", (offload1.norm_ms - offload0.norm_ms) / iters},
        {"wait", (offload1.wait_ms - offload0.wait_ms) / iters},
        {"adam", (offload1.adam_ms - offload0.adam_ms) / iters},
        {"gather", (offload1.gather_ms - offload0.gather_ms) / iters}}}}
      .dump();
}

namespace {

// The decode benchmark's named shape: a Mixtral-sized MoE cut to 4 layers (random weights).
ModelConfig decode_shape(const std::string& name) {
  MOEX_CHECK(name == "mixtral4l", "unknown --shape '", name, "' (mixtral4l)");
  const std::string json = R"({
    "vocab_size": 32000, "hidden_size": 4096, "num_layers": 4, "num_heads": 32,
    "num_kv_heads": 8, "max_seq_len": 4096, "ffn_size": 14336, "positions": "rope",
    "rope_theta": 1000000.0, "norm": "rmsnorm", "activation": "swiglu", "tie_embeddings": false,
    "moe": {"layer_freq": 1, "num_experts": 8, "top_k": 2, "ffn_size": 14336,
            "renormalize": true, "dropless": true}})";
  return ModelConfig::from_json(JsonReader::from_string(json, "--shape mixtral4l"));
}

// Copy rate of the device in bytes/s (read + write), over `bytes`-sized buffers.
double copy_rate(const Device& device, int64_t bytes) {
  const Tensor a = Tensor::empty(Shape{bytes}, DType::kU8, device);
  const Tensor b = Tensor::empty(Shape{bytes}, DType::kU8, device);
  ops::zero(a);
  ops::copy(a, b);  // warm-up (pages touched)
  ops::synchronize(device);
  const int reps = 5;
  const auto start = SteadyClock::now();
  for (int i = 0; i < reps; ++i) ops::copy(i % 2 ? b : a, i % 2 ? a : b);
  ops::synchronize(device);
  return 2.0 * reps * static_cast<double>(bytes) / (ms_since(start) / 1000.0);
}

// One batch size of run_decode_bench on an initialised model; `rate` is the copy rate in bytes/s.
std::string decode_one_batch(model::Model& m, const std::string& model_name, int batch,
                             int new_tokens, int64_t prompt_len, double rate,
                             const infer::SamplingParams& sampling) {
  const ModelConfig& mc = m.config();
  const Device device = m.device();
  // B sequences of a prompt_len-token prompt decode together through the serving scheduler
  // (paged KV).
  infer::SchedulerOptions so;
  so.max_batch = batch;
  so.step_tokens = std::max<int64_t>(batch * prompt_len, batch);
  so.max_context = prompt_len + new_tokens;
  infer::Scheduler scheduler(m, so);
  std::string error;  // the first sequence that ended with an error: the numbers would be void
  for (int b = 0; b < batch; ++b) {
    infer::Request r;
    r.prompt = random_tokens(prompt_len, mc.vocab_size, 2 + b);
    r.max_tokens = new_tokens;
    r.sampling = sampling;
    r.sampling.seed += static_cast<uint64_t>(b);
    r.on_finish = [&error](infer::FinishReason reason, const std::string& message) {
      if (reason == infer::FinishReason::kError && error.empty()) error = message;
    };
    scheduler.submit(std::move(r));
  }
  auto start = SteadyClock::now();
  scheduler.step();  // admits and prefills every sequence, samples their first tokens
  ops::synchronize(device);
  const double prefill_ms = ms_since(start);
  // The last few steps run with the per-op timers on (op_ms) and are not timed.
  const int64_t profiled = std::min<int64_t>(8, new_tokens / 4);
  // Nor are the first two decode steps: the first captures the batch's CUDA graph (a one-off
  // cost of a few ms per batch size, like a server's start-up capture), and the second reaches
  // the steady state of one step launched ahead of the one being read.
  const int64_t warmup = std::min<int64_t>(2, (new_tokens - 1 - profiled) / 2);
  bool more = true;
  for (int64_t i = 0; i < warmup && more; ++i) more = scheduler.step();
  start = SteadyClock::now();
  const model::Model::PagedHostTimes host0 = m.paged_host_times();
  int64_t steps = 0;
  while (more && steps + warmup + profiled < new_tokens - 1 && (more = scheduler.step())) ++steps;
  ops::synchronize(device);
  const double decode_ms = ms_since(start);
  const model::Model::PagedHostTimes host1 = m.paged_host_times();
  const double per_launch = 1.0 / std::max<int64_t>(1, host1.launches - host0.launches);
  const double ms_per_step = decode_ms / std::max<int64_t>(steps, 1);
  nlohmann::json budget = nlohmann::json::object();
  if (profiled > 0 && more) {
    ops::profile_enable(true);
    int64_t profiled_steps = 0;
    while (scheduler.step()) ++profiled_steps;
    budget = profile_budget(static_cast<double>(profiled_steps));
  }
  MOEX_CHECK(error.empty(), "bench decode: a sequence ended with an error: ", error);
  // The step's device time alone (its graph back to back): the rest of ms_per_step is host work
  // between steps (building the step, the upload, waiting for the sampled tokens).
  const int64_t graph_replays = m.paged_graph_replays();  // before the timing replays below
  const double graph_ms = device.is_cuda() ? m.paged_graph_ms(batch, 20) : 0.0;

  // The floor: bytes a step must read (every non-expert weight, the experts the batch can be
  // expected to touch, the KV cache) over the device's copy rate.
  const double dtype_bytes = device.is_cuda() ? 2.0 : 4.0;
  double expert_params = 0, touched = 0;
  for (const LayerSpec& l : mc.layers) {
    if (!l.moe) continue;
    const MoEConfig& e = l.moe_config;
    const double per_expert = 3.0 * mc.hidden_size * e.ffn_size;
    expert_params += e.num_experts * per_expert;
    const double miss = std::pow(1.0 - static_cast<double>(e.top_k) / e.num_experts, batch);
    touched += e.num_experts * (1.0 - miss) * per_expert;
  }
  const double embed = static_cast<double>(mc.vocab_size) * mc.hidden_size;  // a lookup, not read
  const double weights = static_cast<double>(mc.num_parameters()) - expert_params - embed + touched;
  const double kv =
      2.0 * mc.num_layers * batch * (prompt_len + new_tokens / 2.0) * mc.num_kv_heads * mc.head_dim;
  const double bytes = (weights + kv) * dtype_bytes;
  const double floor_ms = bytes / rate * 1000.0;
  return nlohmann::json{{"bench", "decode"},
                        {"model", model_name},
                        {"device", device.str()},
                        {"batch", batch},
                        {"prompt_tokens", prompt_len},
                        {"new_tokens", new_tokens},
                        {"temperature", sampling.temperature},
                        {"top_k", sampling.top_k},
                        {"top_p", sampling.top_p},
                        {"prefill_ms", prefill_ms},
                        {"ms_per_step", ms_per_step},
                        {"tokens_per_s", batch * steps / (decode_ms / 1000.0)},
                        {"bytes_per_step", bytes},
                        {"copy_gbps", rate / 1e9},
                        // decode steps replayed from captured CUDA graphs so far (0 on the CPU)
                        {"graph_replays", graph_replays},
                        // device ms of one captured step replayed back to back (0: none)
                        {"graph_ms", graph_ms},
                        // host ms per step launching it, and waiting for a step's tokens
                        {"host_launch_ms", (host1.launch_ms - host0.launch_ms) * per_launch},
                        {"host_wait_ms", (host1.wait_ms - host0.wait_ms) * per_launch},
                        {"followed_steps", scheduler.stats().followed_steps},
                        {"floor_ms", floor_ms},
                        {"frac_of_floor", floor_ms / ms_per_step},
                        // GPU ms per step in each op, over the last steps (the rest of
                        // ms_per_step is launch gaps, host work and the logits copy)
                        {"op_ms", budget}}
      .dump();
}

}  // namespace

std::vector<std::string> run_decode_bench(const std::string& config_path, const std::string& shape,
                                          const std::string& device_flag,
                                          const std::vector<int>& batches, int new_tokens,
                                          int prompt_len, const infer::SamplingParams& sampling) {
  infer::check_sampling_params(sampling);
  MOEX_CHECK(new_tokens >= 2, "--tokens must be >= 2, got ", new_tokens);
  MOEX_CHECK(prompt_len >= 1, "--prompt must be >= 1, got ", prompt_len);
  for (const int batch : batches) MOEX_CHECK(batch >= 1, "--batch must be >= 1, got ", batch);
  const ModelConfig mc =
      shape.empty() ? train::TrainConfig::from_file(config_path).model : decode_shape(shape);
  const Device device = Device::parse(device_flag.empty() ? "cpu" : device_flag, "--device");
  MOEX_CHECK(prompt_len + new_tokens <= mc.max_seq_len, "--prompt + --tokens (", prompt_len, " + ",
             new_tokens, ") exceed the model's max_seq_len (", mc.max_seq_len, ")");
  model::Model m(mc, device, nullptr, {}, false, model::ModelState::inference(device));
  m.init_weights(1);
  const double rate = copy_rate(device, device.is_cuda() ? (int64_t{1} << 30) : (int64_t{1} << 28));
  std::vector<std::string> lines;
  for (const int batch : batches)
    lines.push_back(decode_one_batch(m, shape.empty() ? config_path : shape, batch, new_tokens,
                                     prompt_len, rate, sampling));
  return lines;
}

}  // namespace moex::bench
