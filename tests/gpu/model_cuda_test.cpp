// The whole model on the GPU against the same model on the CPU (docs/architecture.md §Numerics):
// logits of the four Hugging Face fixtures, one step's gradients, a 50-step training curve,
// KV-cache decoding, and a checkpoint written from the GPU read back on the CPU. Built everywhere
// (CI compiles it); runs only where a GPU is visible (scripts/gpu_check.sh).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "core/rng.h"
#include "core/stochastic_round.h"
#include "cuda/device.h"
#include "infer/json_constraint.h"
#include "infer/json_prefix.h"
#include "infer/scheduler.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/model_io.h"
#include "ops/device.h"
#include "ops/elementwise.h"
#include "paged_serving_scenario.h"
#include "train/optimizer.h"

namespace fs = std::filesystem;

namespace moex {
namespace {

// Fixtures travel with the working tree: scripts/gpu_check.sh runs from the repository root.
fs::path fixture_dir(const std::string& arch) {
  fs::path p = fs::path("tests") / "fixtures" / "hf" / arch;
  if (!fs::exists(p)) p = fs::path(__FILE__).parent_path().parent_path() / "fixtures" / "hf" / arch;
  return p;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<float> host_floats(const Tensor& t) {
  const Tensor h = t.to(Device::cpu());
  return {h.data<float>(), h.data<float>() + h.numel()};
}

// Any float tensor (bf16 too) as f32 values on the host.
std::vector<float> widened(const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), DType::kF32);
  ops::copy(t, h);
  return {h.data<float>(), h.data<float>() + h.numel()};
}

// A CPU model holding exactly the weights the GPU model computes with (its bf16 copy, widened):
// the two then differ only by bf16 activations and fp32 accumulation order.
std::unique_ptr<model::Model> cpu_twin(const model::Model& gpu) {
  auto cpu = std::make_unique<model::Model>(gpu.config());
  ops::copy(gpu.compute_params().flat(), cpu->params().flat());
  cpu->weights_changed();
  return cpu;
}

class GpuModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no GPU visible";
  }
};

// A small MoE in the tiny config's shape family: RMSNorm, RoPE, SwiGLU, per-head q/k norm,
// top-2 of 8 experts every other layer.
const char* kSmallConfig = R"({
    "vocab_size": 512, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 128, "ffn_size": 256, "positions": "rope", "norm": "rmsnorm",
    "activation": "swiglu", "tie_embeddings": true, "qk_norm": "per_head",
    "moe": {"layer_freq": 2, "num_experts": 8, "top_k": 2, "ffn_size": 128, "renormalize": true,
            "capacity_factor": 2.0, "eval_capacity_factor": 2.0, "aux_loss_coef": 0.01,
            "z_loss_coef": 0.001}})";

ModelConfig small_config() {
  return ModelConfig::from_json(JsonReader::from_string(kSmallConfig, "small_config"));
}

// The small config with the text `from` replaced by `to`.
ModelConfig small_config_with(const std::string& from, const std::string& to) {
  std::string json = kSmallConfig;
  json.replace(json.find(from), from.size(), to);
  return ModelConfig::from_json(JsonReader::from_string(json, "small_config with " + to));
}

// Sequences with structure to learn: each row counts up from a random start, modulo the vocab.
void counting_batch(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed,
                    std::vector<int32_t>* ids, std::vector<int32_t>* targets) {
  ids->assign(batch * seq, 0);
  targets->assign(batch * seq, -100);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = philox_u32(seed, 3, b) % vocab, step = 1 + philox_u32(seed, 4, b) % 3;
    for (int64_t t = 0; t < seq; ++t) (*ids)[b * seq + t] = (start + step * t) % vocab;
    for (int64_t t = 0; t + 1 < seq; ++t) (*targets)[b * seq + t] = (*ids)[b * seq + t + 1];
  }
}

TEST_F(GpuModel, HfFixtureLogitsMatchTheCpu) {
  for (const std::string arch : {"mixtral", "olmoe", "qwen2_moe", "qwen3_moe"}) {
    const fs::path dir = fixture_dir(arch);
    auto f32_model = model::load_model((dir / "model").string());
    auto gpu_model = model::load_model((dir / "model").string(), Device::cuda());
    auto cpu_model = cpu_twin(*gpu_model);
    const io::SafetensorsFile fx =
        io::SafetensorsFile::open((dir / "fixture.safetensors").string());
    const Tensor ids_t = fx.copy("input_ids");
    const int64_t batch = ids_t.dim(0), seq = ids_t.dim(1), vocab = cpu_model->config().vocab_size;
    const int32_t* ids = ids_t.data<int32_t>();
    std::vector<float> want(batch * seq * vocab), got(batch * seq * vocab, NAN), f32(want.size());
    cpu_model->logits(ids, batch, seq, want.data());
    gpu_model->logits(ids, batch, seq, got.data());
    f32_model->logits(ids, batch, seq, f32.data());
    const double err = rel_l2(got, want), err_f32 = rel_l2(got, f32);
    // Greedy tokens agree wherever the CPU's top-2 margin is above bf16 noise.
    int64_t compared = 0, agree = 0;
    for (int64_t r = 0; r < batch * seq; ++r) {
      const float* w = want.data() + r * vocab;
      const float* g = got.data() + r * vocab;
      std::vector<float> sorted(w, w + vocab);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      if (sorted[0] - sorted[1] < 0.05f * std::max(1.0f, std::fabs(sorted[0]))) continue;
      ++compared;
      agree += std::max_element(w, w + vocab) - w == std::max_element(g, g + vocab) - g;
    }
    // Rows with their own error: a routing decision that bf16 flips shows as a few bad rows.
    std::vector<double> row_err;
    for (int64_t r = 0; r < batch * seq; ++r)
      row_err.push_back(
          rel_l2(std::vector<float>(got.begin() + r * vocab, got.begin() + (r + 1) * vocab),
                 std::vector<float>(want.begin() + r * vocab, want.begin() + (r + 1) * vocab)));
    std::sort(row_err.begin(), row_err.end());
    std::printf(
        "[ info ] %s: GPU logits rel L2 %.3g against the CPU on the same bf16 weights "
        "(rows: median %.3g, max %.3g), %.3g against the fp32 weights; greedy agrees "
        "%lld/%lld\n",
        arch.c_str(), err, row_err[row_err.size() / 2], row_err.back(), err_f32,
        static_cast<long long>(agree), static_cast<long long>(compared));
    EXPECT_LT(err, 2e-2) << arch;
    EXPECT_GT(compared, 0) << arch;
    EXPECT_EQ(agree, compared) << arch;
  }
}

// One step's gradients against the CPU on the same bf16 weights. A dense model (no routing to
// flip) must agree per tensor within bf16 accumulation error; in the MoE model a few tokens may
// take another expert under bf16 inputs, which moves the gradients of that layer's experts, so
// its bound is looser, and the whole gradient must still agree within 5%.
// A training forward (routing step `step`) and backward of m on counting batch `seed` of 8 x 64
// tokens, from zeroed gradients: its loss; the batch goes to ids and targets.
double train_forward_backward(model::Model& m, uint64_t seed, int step, std::vector<int32_t>* ids,
                              std::vector<int32_t>* targets) {
  counting_batch(8, 64, m.config().vocab_size, seed, ids, targets);
  m.zero_grad();
  model::ForwardOptions opt;
  opt.training = true;
  opt.for_backward = true;
  opt.step = step;
  const double loss = m.forward(ids->data(), targets->data(), 8, 64, opt).loss;
  m.backward();
  return loss;
}

// The losses of 50 AdamW steps (lr 3e-3, beta2 0.95, weight decay 0.1, clipping at 1) on counting
// batches of 8 x 64 tokens, from init_weights(7).
std::vector<double> fifty_step_losses(model::Model& m) {
  train::OptimizerConfig oc;
  oc.lr = 3e-3;
  oc.beta2 = 0.95;
  oc.weight_decay = 0.1;
  oc.grad_clip = 1.0;
  m.init_weights(7);
  train::AdamW adam(m.params(), oc);
  std::vector<double> curve;
  for (int step = 0; step < 50; ++step) {
    std::vector<int32_t> ids, targets;
    curve.push_back(train_forward_backward(m, 100 + step, step, &ids, &targets));
    adam.step(m, oc.lr, step + 1);
  }
  return curve;
}

// fifty_step_losses of both models: rounding differences (bf16 activations, weights or
// gradients) change each step's numbers by ~1% and flip routing decisions near a tie, so the curves
// drift apart slowly; they must stay within 5% at every step, and `other` must learn (its loss
// falls by more than 40%; the CPU's falls by 48%). Prints both curves' ends and the worst gap.
void expect_training_follows(model::Model& ref, model::Model& other, const char* ref_name,
                             const char* other_name) {
  const std::vector<double> a = fifty_step_losses(ref), b = fifty_step_losses(other);
  double worst = 0;
  for (size_t s = 0; s < a.size(); ++s) worst = std::max(worst, std::fabs(b[s] - a[s]) / a[s]);
  std::printf("[ info ] loss %s %.4f -> %.4f, %s %.4f -> %.4f, worst step diff %.3g\n", ref_name,
              a.front(), a.back(), other_name, b.front(), b.back(), worst);
  EXPECT_LT(worst, 5e-2);
  EXPECT_LT(b.back(), 0.6 * b.front());
}

void check_one_step_gradients(const std::string& config_text, double per_tensor, double total) {
  const ModelConfig config =
      ModelConfig::from_json(JsonReader::from_string(config_text, "gradient_config"));
  model::Model gpu_model(config, Device::cuda());
  gpu_model.init_weights(5);
  auto cpu_model = cpu_twin(gpu_model);
  std::vector<int32_t> ids, targets;
  counting_batch(4, 64, config.vocab_size, 1, &ids, &targets);
  model::ForwardOptions opt;
  opt.training = true;
  opt.for_backward = true;
  double loss[2];
  model::Model* models[2] = {cpu_model.get(), &gpu_model};
  for (int i = 0; i < 2; ++i) {
    models[i]->zero_grad();
    const model::LossResult r = models[i]->forward(ids.data(), targets.data(), 4, 64, opt);
    loss[i] = r.loss;
    models[i]->backward();
  }
  EXPECT_NEAR(loss[1], loss[0], 1e-2 * loss[0]);
  const ParamBuffer& g_cpu = cpu_model->grads();
  const ParamBuffer& g_gpu = gpu_model.grads();
  double worst = 0;
  for (int i = 0; i < g_cpu.size(); ++i) {
    const double err = rel_l2(host_floats(g_gpu.tensor(i)), host_floats(g_cpu.tensor(i)));
    worst = std::max(worst, err);
    EXPECT_LT(err, per_tensor) << g_cpu.name(i);
  }
  const double all = rel_l2(host_floats(g_gpu.flat()), host_floats(g_cpu.flat()));
  std::printf("[ info ] gradients: worst tensor rel L2 %.3g, all %.3g\n", worst, all);
  EXPECT_LT(all, total);
}

TEST_F(GpuModel, OneStepGradientsMatchTheCpuDense) {
  std::string dense = kSmallConfig;
  dense = dense.substr(0, dense.find(",\n    \"moe\"")) + "}";
  check_one_step_gradients(dense, 3e-2, 2e-2);
}

TEST_F(GpuModel, OneStepGradientsMatchTheCpuMoE) {
  check_one_step_gradients(kSmallConfig, 0.15, 5e-2);
}

// Micro-batches add into one gradient buffer on the GPU too (the MoE experts write straight into
// it): two forward/backward passes of one batch give twice the gradient of one.
TEST_F(GpuModel, GradientsAccumulateOverMicroBatches) {
  const ModelConfig config = small_config();
  model::Model m(config, Device::cuda());
  m.init_weights(13);
  std::vector<int32_t> ids, targets;
  counting_batch(4, 32, config.vocab_size, 4, &ids, &targets);
  model::ForwardOptions opt;
  opt.for_backward = true;  // eval-mode routing: no noise, the same experts both times
  m.zero_grad();
  m.forward(ids.data(), targets.data(), 4, 32, opt);
  m.backward();
  std::vector<float> once = host_floats(m.grads().flat());
  m.forward(ids.data(), targets.data(), 4, 32, opt);
  m.backward();
  std::vector<float> twice = host_floats(m.grads().flat());
  for (float& g : once) g *= 2.0f;
  EXPECT_LT(rel_l2(twice, once), 1e-5);
  for (int i = 0; i < m.grads().size(); ++i) {
    const std::vector<float> g = host_floats(m.grads().tensor(i));
    double norm = 0;
    for (float v : g) norm += double(v) * v;
    EXPECT_GT(norm, 0.0) << m.grads().name(i) << " got no gradient";
  }
}

// optimizer.grads_dtype "bf16" (docs/gpu-model.md §bf16 gradients): the same kernels write their
// gradients rounded to bf16 (the dW GEMMs' outputs, the experts' too) or add fp32 partial sums
// into them (norm weights, the embedding). One micro-batch gives the fp32 model's gradients to
// about one bf16 rounding in every tensor, a second one adds in bf16, and 50 steps of training
// follow the fp32-gradient run's losses.
TEST_F(GpuModel, Bf16GradientsAreTheFp32GradientsRounded) {
  const ModelConfig config = small_config();
  model::Model m32(config, Device::cuda());
  model::Model m16(config, Device::cuda(), nullptr, {}, false, {DType::kF32, DType::kBF16});
  m32.init_weights(13);
  m16.init_weights(13);
  ASSERT_EQ(m16.grads().flat().dtype(), DType::kBF16);
  std::vector<int32_t> ids, targets;
  counting_batch(4, 32, config.vocab_size, 4, &ids, &targets);
  model::ForwardOptions opt;
  opt.for_backward = true;  // eval-mode routing: the same experts in both models
  std::vector<float> g32[2], g16[2];
  for (int micro = 0; micro < 2; ++micro) {
    for (model::Model* m : {&m32, &m16}) {
      if (micro == 0) m->zero_grad();
      m->forward(ids.data(), targets.data(), 4, 32, opt);
      m->backward();
    }
    g32[micro] = widened(m32.grads().flat());
    g16[micro] = widened(m16.grads().flat());
    for (int i = 0; i < m16.grads().size(); ++i) {
      const std::vector<float> a = widened(m16.grads().tensor(i));
      const std::vector<float> b = widened(m32.grads().tensor(i));
      double norm = 0;
      for (float v : a) norm += double(v) * v;
      EXPECT_GT(norm, 0.0) << m16.grads().name(i) << " got no gradient";
      EXPECT_LT(rel_l2(a, b), 1e-2) << m16.grads().name(i) << " micro-batch " << micro;
    }
    const double all = rel_l2(g16[micro], g32[micro]);
    std::printf("[ info ] bf16 gradients after %d micro-batch(es): rel L2 %.3g\n", micro + 1, all);
    EXPECT_LT(all, 5e-3);
  }

  model::Model f32_run(config, Device::cuda());
  model::Model bf16_run(config, Device::cuda(), nullptr, {}, false, {DType::kF32, DType::kBF16});
  expect_training_follows(f32_run, bf16_run, "fp32 gradients", "bf16");
}

// optimizer.master_dtype "bf16" (docs/gpu-model.md §bf16 master weights): the bf16 weights are the
// master and what the kernels read, with no copy. Loading rounds to nearest and saving widens
// exactly, so host weights come back as their bf16 rounding, and those go in and out unchanged (a
// checkpoint round trip is exact). The forward matches the fp32-master model's, whose kernels read
// the same bf16 weights (only the fp32 router differs by rounding), and 50 steps with bf16 master
// weights and gradients (the HF peer's state) follow the fp32 run's losses.
TEST_F(GpuModel, Bf16MasterWeightsLoadSaveAndTrain) {
  const ModelConfig config = small_config();
  const model::ModelState bf16_state{DType::kBF16, DType::kBF16};
  model::Model m32(config, Device::cuda());
  model::Model m16(config, Device::cuda(), nullptr, {}, false, bf16_state);
  ASSERT_EQ(m16.params().flat().dtype(), DType::kBF16);
  EXPECT_EQ(&m16.compute_params(), &m16.params());
  m32.init_weights(13);
  m16.init_weights(13);
  const ParamBuffer h32 = m32.host_params(), h16 = m16.host_params();
  ASSERT_EQ(h16.flat().dtype(), DType::kF32);
  const float* a = h32.flat().data<float>();
  const float* b = h16.flat().data<float>();
  int64_t rounded = 0;
  for (int64_t i = 0; i < h32.flat().numel(); ++i) {
    ASSERT_EQ(b[i], bf16_bits_to_f32(f32_to_bf16(a[i]))) << i;
    rounded += a[i] != b[i];
  }
  EXPECT_GT(rounded, h32.flat().numel() / 2) << "the fp32 weights were already bf16 values";
  m16.store_host_params(h16);
  const std::vector<float> again = widened(m16.params().flat());
  ASSERT_EQ(again, std::vector<float>(b, b + h16.flat().numel()));

  std::vector<int32_t> ids, targets;
  counting_batch(2, 32, config.vocab_size, 5, &ids, &targets);
  std::vector<float> logits32(2 * 32 * config.vocab_size), logits16(logits32.size());
  m32.logits(ids.data(), 2, 32, logits32.data());
  m16.logits(ids.data(), 2, 32, logits16.data());
  EXPECT_LT(rel_l2(logits16, logits32), 1e-2);

  model::Model f32_run(config, Device::cuda());
  model::Model bf16_run(config, Device::cuda(), nullptr, {}, false, bf16_state);
  expect_training_follows(f32_run, bf16_run, "fp32 master", "bf16 master");
}

// A checkpointed training step (block inputs kept, blocks recomputed in backward) against the plain
// one on the GPU: training mode, so the router's jitter noise must be redrawn identically, and the
// recomputed routing must repeat the first pass's without being stored (docs/gpu-model.md
// §Activation checkpointing). The same kernels on the same bits: loss and gradients agree to
// within the order of the backward kernels' reductions.
TEST_F(GpuModel, ActivationCheckpointingGivesTheSameStep) {
  const ModelConfig config =
      small_config_with(R"("renormalize": true)", R"("renormalize": true, "jitter_eps": 0.01)");
  model::Model m(config, Device::cuda());
  m.init_weights(17);
  std::vector<int32_t> ids, targets;
  counting_batch(4, 32, config.vocab_size, 6, &ids, &targets);
  double loss[2];
  std::vector<float> grads[2];
  for (int checkpoint = 0; checkpoint < 2; ++checkpoint) {
    m.zero_grad();
    model::ForwardOptions opt;
    opt.training = true;
    opt.for_backward = true;
    opt.checkpoint_activations = checkpoint == 1;
    opt.seed = 99;
    opt.step = 3;
    loss[checkpoint] = m.forward(ids.data(), targets.data(), 4, 32, opt).loss;
    m.backward();
    grads[checkpoint] = host_floats(m.grads().flat());
  }
  EXPECT_NEAR(loss[1], loss[0], 1e-5 * std::abs(loss[0]));
  // A different routing would move the gradients by far more (percents).
  EXPECT_LT(rel_l2(grads[1], grads[0]), 1e-3);
}

// Kept MoE rows in gradient memory (docs/gpu-model.md §Kept rows in gradient memory): a model
// that lends each MoE block the gradient memory of the blocks below it trains like one whose layers
// keep their rows in buffers of their own. Two layouts: the small config (tied head, so only the
// blocks' memory is lent; capacity mode; dense blocks between), and an untied dropless one with
// bf16 gradients, whose rows outgrow a block's gradients so the regions span several blocks and
// cover alignment padding (the per-head q/k norms' 32 elements each). Three steps, the first of
// two micro-batches (the second finds the memory written and lends none). The forwards are
// deterministic, so the first losses are the same bits; the attention's dq adds in fp32 atomics,
// so the gradients agree to within that order (a kept row written over would move them by
// percents); padding must read zero after backward (the norm and reductions read it).
TEST_F(GpuModel, KeptRowsInGradientMemoryTrainLikeOwnBuffers) {
  struct Layout {
    ModelConfig config;
    model::ModelState state;
  };
  std::string untied = kSmallConfig;
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {R"("tie_embeddings": true)", R"("tie_embeddings": false)"},
           {R"("layer_freq": 2)", R"("layer_freq": 1, "dropless": true)"}})
    untied.replace(untied.find(from), from.size(), to);
  const std::vector<Layout> layouts = {
      {small_config(), {}},
      {ModelConfig::from_json(JsonReader::from_string(untied, "untied dropless config")),
       {DType::kF32, DType::kBF16}}};
  for (const Layout& layout : layouts) {
    SCOPED_TRACE(layout.config.tie_embeddings ? "tied, capacity mode" : "untied, dropless, bf16");
    model::Model lent(layout.config, Device::cuda(), nullptr, {}, false, layout.state);
    model::Model own(layout.config, Device::cuda(), nullptr, {}, false, layout.state);
    own.set_lend_gradient_memory(false);
    train::OptimizerConfig oc;
    oc.lr = 3e-3;
    oc.grad_clip = 1.0;
    lent.init_weights(23);
    own.init_weights(23);
    train::AdamW adam_lent(lent.params(), oc), adam_own(own.params(), oc);
    int64_t lent_elements = 0, padding_lent = 0;
    size_t kept_lent = 0, kept_own = 0;  // the MoE layers' own rows after the first forward
    for (int step = 0; step < 3; ++step) {
      const int micro_batches = step == 0 ? 2 : 1;
      double loss[2] = {0, 0}, norm[2] = {0, 0};
      for (int mb = 0; mb < micro_batches; ++mb) {
        std::vector<int32_t> ids, targets;
        counting_batch(8, 64, layout.config.vocab_size, 40 + 3 * step + mb, &ids, &targets);
        model::ForwardOptions opt;
        opt.training = true;
        opt.for_backward = true;
        opt.step = step;
        opt.seed = 5;
        opt.loss_scale = 1.0 / micro_batches;
        for (int i = 0; i < 2; ++i) {
          model::Model& m = i == 0 ? lent : own;
          if (mb == 0) m.zero_grad();
          loss[i] = m.forward(ids.data(), targets.data(), 8, 64, opt).loss;
          m.backward();
        }
        if (step == 0 && mb == 0) {
          kept_lent = lent.moe_kept_bytes();
          kept_own = own.moe_kept_bytes();
        }
        int64_t lent_now = 0;
        for (const model::LentRegion& r : lent.lent_regions()) {
          lent_now += r.end - r.begin;
          // Padding inside this region: what zero_lent_padding must clear.
          const ParamBuffer& g = lent.grads();
          for (int e = 0; e + 1 < g.size(); ++e) {
            const int64_t end = g.offset(e) + g.tensor(e).numel(), next = g.offset(e + 1);
            padding_lent += std::max<int64_t>(0, std::min(next, r.end) - std::max(end, r.begin));
          }
        }
        if (mb == 1) EXPECT_EQ(lent_now, 0) << "a second micro-batch found its memory written";
        if (mb == 0) lent_elements += lent_now;
        if (step == 0 && mb == 0) {
          EXPECT_EQ(loss[0], loss[1]) << "the same forward, rows kept elsewhere";
        } else {
          EXPECT_NEAR(loss[0], loss[1], 1e-3 * loss[1]) << "step " << step;
        }
      }
      const ParamBuffer& g = lent.grads();
      const std::vector<float> all = widened(g.flat());
      for (int e = 0; e < g.size(); ++e) {
        const int64_t end = g.offset(e) + g.tensor(e).numel();
        const int64_t next = e + 1 < g.size() ? g.offset(e + 1) : g.total_elements();
        for (int64_t i = end; i < next; ++i)
          ASSERT_EQ(all[static_cast<size_t>(i)], 0.0f) << "padding after " << g.name(e);
      }
      EXPECT_LT(rel_l2(all, widened(own.grads().flat())), 1e-3) << "step " << step;
      norm[0] = adam_lent.step(lent, oc.lr, step + 1);
      norm[1] = adam_own.step(own, oc.lr, step + 1);
      EXPECT_NEAR(norm[0], norm[1], 1e-3 * norm[1]) << "step " << step;
    }
    EXPECT_LT(rel_l2(widened(lent.params().flat()), widened(own.params().flat())), 1e-4);
    std::printf("[ info ] %s: %lld gradient elements lent over 3 steps (%lld of them padding), "
                "own MoE rows after the first forward %zu bytes against %zu\n",
                layout.config.tie_embeddings ? "tied" : "untied dropless",
                static_cast<long long>(lent_elements), static_cast<long long>(padding_lent),
                kept_lent, kept_own);
    EXPECT_GT(lent_elements, 0);
    EXPECT_LT(kept_lent, kept_own);
    if (!layout.config.tie_embeddings) EXPECT_GT(padding_lent, 0) << "no padding was lent";
  }
}

TEST_F(GpuModel, TrainingFollowsTheCpuLossCurve) {
  model::Model cpu(small_config(), Device::cpu()), gpu(small_config(), Device::cuda());
  expect_training_follows(cpu, gpu, "CPU", "GPU");
}

// ZeRO-Offload: master weights and Adam moments in pinned host memory, the CPU Adam tile by
// tile, the bf16 copy uploaded after each tile. Given the same gradients (the GPU-optimizer
// model's, copied over each step) it makes the GPU optimizer's fp32 update, so the master weights
// agree to float rounding and the bf16 copies to a last-bit rounding here and there. (Trained on
// their own gradients the two drift apart like any two runs: Adam turns last-bit gradient
// differences on near-zero elements into full +-lr steps.) Trained alone, offload learns.
// The host's AdamW forms its fp32 coefficients from the same doubles as the GPU kernel and repeats
// its unfused operations, so the offloaded master weights equal the GPU optimizer's bit for bit,
// with fp32 moments and with bf16 moments (optimizer.moments_dtype: both twins hash the same
// gradient and weight bits for the stochastic rounding).
TEST_F(GpuModel, OffloadStepsLikeTheGpuOptimizer) {
  const ModelConfig config = small_config();
  for (const DType moments : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string("moments ") + dtype_name(moments));
    train::OptimizerConfig oc;
    oc.lr = 3e-3;
    oc.weight_decay = 0.1;
    oc.grad_clip = 1.0;
    oc.moments_dtype = moments;
    model::Model gpu(config, Device::cuda()), offloaded(config, Device::cuda(), nullptr, {}, true);
    EXPECT_FALSE(gpu.master_on_host());
    EXPECT_TRUE(offloaded.master_on_host());
    gpu.init_weights(7);
    offloaded.init_weights(7);
    train::AdamW adam_gpu(gpu.params(), oc), adam_offload(offloaded.params(), oc);
    EXPECT_EQ(adam_gpu.state_bytes(),
              gpu.params().flat().numel() * 2 * static_cast<int64_t>(dtype_size(moments)));
    std::vector<double> losses;
    for (int step = 0; step < 10; ++step) {
      std::vector<int32_t> ids, targets;
      train_forward_backward(gpu, 300 + step, step, &ids, &targets);
      ops::copy(gpu.grads().flat(), offloaded.grads().flat());
      const double norm_gpu = adam_gpu.step(gpu, oc.lr, step + 1);
      const double norm_offload = adam_offload.step(offloaded, oc.lr, step + 1);
      EXPECT_NEAR(norm_offload, norm_gpu, 1e-5 * norm_gpu) << "step " << step;
      const double master =
          rel_l2(host_floats(offloaded.params().flat()), host_floats(gpu.params().flat()));
      const double copy =
          rel_l2(widened(offloaded.compute_params().flat()), widened(gpu.compute_params().flat()));
      EXPECT_EQ(master, 0.0) << "master weights after step " << step + 1;
      EXPECT_EQ(copy, 0.0) << "bf16 copy after step " << step + 1;
      // The offloaded model's own weights: its loss on the batch it just stepped on falls.
      losses.push_back(offloaded.forward(ids.data(), targets.data(), 8, 64, {}).loss);
    }
    EXPECT_LT(losses.back(), losses.front());
    for (const bool second : {false, true}) {
      const Tensor on_gpu = adam_gpu.gather_moment(second);
      const Tensor on_host = adam_offload.gather_moment(second);
      EXPECT_EQ(rel_l2(host_floats(on_host), host_floats(on_gpu)), 0.0)
          << (second ? "exp_avg_sq" : "exp_avg");
    }
  }
}

// Offload of bf16 state (docs/parallelism.md §ZeRO-Offload): a bf16 master stays on the GPU and
// the host steps it tile by tile (each tile's weights come down with its gradients and go back
// up), and bf16 gradients come down as bf16. Fed the GPU optimizer's gradients, the offloaded
// model's weights and moments equal the GPU optimizer's bit for bit (the host's loop repeats the
// kernel's unfused operations and rounding bits), over tiles small enough that each pinned buffer
// is reused while an upload from it may still be queued.
TEST_F(GpuModel, OffloadedBf16StateStepsLikeTheGpuOptimizer) {
  const ModelConfig config = small_config();
  struct Case {
    DType master, grads, moments;
  };
  for (const Case& c : {Case{DType::kBF16, DType::kBF16, DType::kBF16},
                        Case{DType::kBF16, DType::kF32, DType::kF32},
                        Case{DType::kF32, DType::kBF16, DType::kBF16}}) {
    SCOPED_TRACE(std::string("master ") + dtype_name(c.master) + ", gradients " +
                 dtype_name(c.grads) + ", moments " + dtype_name(c.moments));
    train::OptimizerConfig oc;
    oc.lr = 3e-3;
    oc.weight_decay = 0.1;
    oc.grad_clip = 1.0;
    oc.moments_dtype = c.moments;
    const model::ModelState state{c.master, c.grads};
    model::Model gpu(config, Device::cuda(), nullptr, {}, false, state);
    model::Model offloaded(config, Device::cuda(), nullptr, {}, true, state);
    // A bf16 master stays on the GPU; an fp32 one goes to the host.
    EXPECT_EQ(offloaded.master_on_host(), c.master == DType::kF32);
    gpu.init_weights(7);
    offloaded.init_weights(7);
    const int64_t tile = 65537;
    ASSERT_GT(gpu.params().flat().numel(), 4 * tile) << "too few tiles to reuse the buffers";
    train::AdamW adam_gpu(gpu.params(), oc), adam_offload(offloaded.params(), oc, true, tile);
    std::vector<double> losses;
    for (int step = 0; step < 6; ++step) {
      std::vector<int32_t> ids, targets;
      train_forward_backward(gpu, 500 + step, step, &ids, &targets);
      ops::copy(gpu.grads().flat(), offloaded.grads().flat());
      const double norm_gpu = adam_gpu.step(gpu, oc.lr, step + 1);
      const double norm_offload = adam_offload.step(offloaded, oc.lr, step + 1);
      EXPECT_EQ(norm_offload, norm_gpu) << "step " << step;
      EXPECT_EQ(widened(offloaded.params().flat()), widened(gpu.params().flat()))
          << "weights after step " << step + 1;
      EXPECT_EQ(widened(offloaded.compute_params().flat()), widened(gpu.compute_params().flat()))
          << "bf16 weights after step " << step + 1;
      losses.push_back(offloaded.forward(ids.data(), targets.data(), 8, 64, {}).loss);
    }
    EXPECT_LT(losses.back(), losses.front());
    for (const bool second : {false, true})
      EXPECT_EQ(host_floats(adam_offload.gather_moment(second)),
                host_floats(adam_gpu.gather_moment(second)))
          << (second ? "exp_avg_sq" : "exp_avg");
  }
}

// init_weights(seed, keep_drawn = false) draws through a host window a bucket at a time: the GPU
// weights equal the whole draw's, for an fp32 master and its bf16 copy and for a bf16 master.
TEST_F(GpuModel, WindowedInitDrawsTheWholeBuffersWeights) {
  for (const DType master : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string("master ") + dtype_name(master));
    const model::ModelState state{master, DType::kF32};
    model::Model whole(small_config(), Device::cuda(), nullptr, {}, false, state);
    model::Model windowed(small_config(), Device::cuda(), nullptr, {}, false, state);
    whole.init_weights(7);
    windowed.init_weights(7, false);
    EXPECT_EQ(widened(windowed.params().flat()), widened(whole.params().flat()));
    EXPECT_EQ(widened(windowed.compute_params().flat()), widened(whole.compute_params().flat()));
  }
}

TEST_F(GpuModel, KVCacheDecodeMatchesFullForward) {
  const ModelConfig config = small_config();
  model::Model m(config, Device::cuda());
  m.init_weights(3);
  std::vector<int32_t> ids, targets;
  counting_batch(2, 24, config.vocab_size, 9, &ids, &targets);
  const int64_t vocab = config.vocab_size;
  std::vector<float> full(2 * 24 * vocab);
  m.logits(ids.data(), 2, 24, full.data());
  model::KVCache cache = m.make_cache(2, 32);
  std::vector<float> last(2 * vocab);
  // A 16-token prefill, then one token at a time.
  for (int64_t pos = 0; pos < 24;) {
    const int64_t len = pos == 0 ? 16 : 1;
    std::vector<int32_t> chunk;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t t = 0; t < len; ++t) chunk.push_back(ids[b * 24 + pos + t]);
    m.forward_cached(chunk.data(), 2, len, cache, last.data());
    pos += len;
    for (int64_t b = 0; b < 2; ++b) {
      const std::vector<float> a(last.begin() + b * vocab, last.begin() + (b + 1) * vocab);
      const std::vector<float> w(full.begin() + ((b * 24) + pos - 1) * vocab,
                                 full.begin() + ((b * 24) + pos) * vocab);
      EXPECT_LT(rel_l2(a, w), 2e-2) << "position " << pos - 1 << " batch " << b;
    }
  }
}

// Serving on the GPU against the full forward of each sequence alone, in the scenario of
// tests/paged_serving_scenario.h (the CPU twin: tests/unit/model_paged_test.cpp).
TEST_F(GpuModel, PagedServingMatchesFullForward) {
  // Serving keeps every route; an eval capacity factor of E/k keeps every route in the reference
  // full forward too (C >= T), so both compute the same function.
  const ModelConfig config =
      small_config_with(R"("eval_capacity_factor": 2.0)", R"("eval_capacity_factor": 4.0)");
  model::Model m(config, Device::cuda());
  m.init_weights(5);
  std::vector<int32_t> ids, unused;
  counting_batch(3, 20, config.vocab_size, 12, &ids, &unused);
  // Tables as wide as each step needs, then padded: its decode steps replay captured graphs. Padded
  // to 160 blocks (640 positions), the attention launches are sized for position splits and take
  // whole head groups, while these short rows use one split each (the kernel tests merge splits).
  for (const int64_t width : {0, 6, 160}) {
    testing::run_paged_serving_scenario(
        m, ids,
        [width](const std::string& what, const std::vector<float>& paged,
                const std::vector<float>& full) {
          EXPECT_LT(rel_l2(paged, full), 2e-2) << what << ", table width " << width;
        },
        width);
  }
  EXPECT_GT(m.paged_graph_replays(), 0);
}

// Request callbacks that append each token to *out and fail the test when the request ends in an
// error.
void collect_tokens(infer::Request& r, std::vector<int32_t>* out, const std::string& what) {
  r.on_token = [out](int32_t t) {
    out->push_back(t);
    return true;
  };
  r.on_finish = [what](infer::FinishReason reason, const std::string& error) {
    EXPECT_NE(reason, infer::FinishReason::kError) << what << ": " << error;
  };
}

// Decode steps replayed from captured CUDA graphs give exactly the tokens of the same steps run
// op by op (the same kernels on the same data), and the captured graphs really are replayed:
// requests join at different steps, so decode steps of several batch sizes occur, and every other
// request samples (temperature, top-k, top-p), so batches mix greedy and sampled rows.
TEST_F(GpuModel, DecodeGraphsGiveTheTokensOfDirectSteps) {
  const ModelConfig config = small_config();
  model::Model m(config, Device::cuda());
  m.init_weights(21);
  auto serve_all = [&](bool graphs) {
    infer::SchedulerOptions so;
    so.max_batch = 4;
    so.step_tokens = 64;
    so.block_size = 8;
    so.max_context = 96;
    so.cuda_graphs = graphs;
    infer::Scheduler s(m, so);
    std::vector<std::vector<int32_t>> tokens(6);
    for (int i = 0; i < 6; ++i) {
      infer::Request r;
      for (int t = 0; t < 3 + 5 * i; ++t)
        r.prompt.push_back(static_cast<int32_t>(philox_u32(31, i, t) % config.vocab_size));
      r.max_tokens = 24;
      if (i % 2 == 1) {
        r.sampling.temperature = 0.8;
        r.sampling.top_k = 40;
        r.sampling.top_p = 0.9;
        r.sampling.seed = static_cast<uint64_t>(i);
      }
      collect_tokens(r, &tokens[i], "graphs " + std::to_string(graphs));
      s.submit(std::move(r));
      if (i % 2 == 1) s.step();  // later requests join running decodes
    }
    while (s.step()) {
    }
    // Steady decoding launched steps ahead of reading the last one's tokens.
    EXPECT_GT(s.stats().followed_steps, 0) << "graphs " << graphs;
    return tokens;
  };
  const int64_t replays_before = m.paged_graph_replays();
  const auto direct = serve_all(false);
  EXPECT_EQ(m.paged_graph_replays(), replays_before);
  const auto graphed = serve_all(true);
  EXPECT_EQ(graphed, direct);
  for (const auto& t : direct) EXPECT_EQ(t.size(), 24u);
  const int64_t replays = m.paged_graph_replays() - replays_before;
  EXPECT_GT(replays, 2 * m.paged_graph_captures()) << "captures " << m.paged_graph_captures();
}

// A dropless model's decode steps of more sequences than the MoE decode kernels take (40 here) lay
// the expert rows out by token count instead of reading the expert loads on the host
// (MoELayerCudaOptions::token_rows_max_rows), so they too replay captured graphs, and give the
// tokens of direct steps. With the counts sync back (MOEX_TOKEN_ROWS_MAX_ROWS=0) the captures
// fail and nothing is replayed.
TEST_F(GpuModel, DroplessDecodeStepsOfManySequencesReplayGraphs) {
  const ModelConfig config =
      small_config_with("\"renormalize\": true", "\"renormalize\": true, \"dropless\": true");
  ASSERT_TRUE(config.layers.at(1).moe && config.layers.at(1).moe_config.dropless);
  model::Model m(config, Device::cuda());
  m.init_weights(23);
  constexpr int kRequests = 40;
  auto serve_all = [&](bool graphs) {
    infer::SchedulerOptions so;
    so.max_batch = kRequests;
    so.step_tokens = 512;  // every prompt in the first step, then decode steps of all 40
    so.block_size = 8;
    so.max_context = 32;
    so.cuda_graphs = graphs;
    infer::Scheduler s(m, so);
    std::vector<std::vector<int32_t>> tokens(kRequests);
    for (int i = 0; i < kRequests; ++i) {
      infer::Request r;
      for (int t = 0; t < 2 + i % 6; ++t)
        r.prompt.push_back(static_cast<int32_t>(philox_u32(41, i, t) % config.vocab_size));
      r.max_tokens = 12;
      collect_tokens(r, &tokens[i], "graphs " + std::to_string(graphs));
      s.submit(std::move(r));
    }
    while (s.step()) {
    }
    return tokens;
  };
  const auto direct = serve_all(false);
  const int64_t replays_before = m.paged_graph_replays();
  const auto graphed = serve_all(true);
  EXPECT_EQ(graphed, direct);
  for (const auto& t : direct) EXPECT_EQ(t.size(), 12u);
  EXPECT_GT(m.paged_graph_replays() - replays_before, 5) << "captures " << m.paged_graph_captures();
}

// A prompt served again takes its whole KV blocks from the prefix cache (32 of its 40 tokens with
// blocks of 8) and computes the last 8 rows alone, where the first run computed all 40 in one step
// (other GEMM shapes, so other bf16 roundings): the first new token's log-probabilities agree with
// the first run's within bf16 noise, and the token is the same unless the first run's top two were
// within that noise. Without the cache the repeat computes everything again.
TEST_F(GpuModel, PrefixCachedPromptGivesTheFirstRunsNextToken) {
  const ModelConfig config = small_config();
  model::Model m(config, Device::cuda());
  m.init_weights(29);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 40; ++t)
    prompt.push_back(static_cast<int32_t>(philox_u32(53, 0, t) % config.vocab_size));
  for (const bool caching : {true, false}) {
    infer::SchedulerOptions so;
    so.max_batch = 2;
    so.step_tokens = 64;
    so.block_size = 8;
    so.max_context = 96;
    so.prefix_caching = caching;
    infer::Scheduler s(m, so);
    std::vector<infer::TokenLogprob> first(2);
    for (int run = 0; run < 2; ++run) {
      infer::Request r;
      r.prompt = prompt;
      r.max_tokens = 1;
      r.logprobs = 2;
      r.on_logprob = [&first, run](const infer::TokenLogprob& lp) { first[run] = lp; };
      s.submit(std::move(r));
      while (s.step()) {
      }
    }
    EXPECT_EQ(s.stats().cached_prompt_tokens, caching ? 32 : 0);
    ASSERT_EQ(first[0].top.size(), 2u);
    ASSERT_EQ(first[1].top.size(), 2u);
    for (int i = 0; i < 2; ++i)
      EXPECT_NEAR(first[1].top[i].second, first[0].top[i].second, 3e-2) << "caching " << caching;
    const float margin = first[0].top[0].second - first[0].top[1].second;
    if (margin > 6e-2) EXPECT_EQ(first[1].token, first[0].token) << "caching " << caching;
    if (!caching) EXPECT_EQ(first[1].logprob, first[0].logprob);  // the same computation
  }
}

// Requests that want log-probabilities (the prompt's too, over chunked prefill) or a logit bias
// run their steps with the logits on the host: the tokens are those of the same requests served
// on the device (host and device samplers draw alike), and the log-probabilities are the
// log-softmax of a full forward over each whole sequence, within bf16 noise.
TEST_F(GpuModel, ServingLogprobsAndBiasOnTheHost) {
  const ModelConfig config =
      small_config_with(R"("eval_capacity_factor": 2.0)", R"("eval_capacity_factor": 4.0)");
  const int64_t vocab = config.vocab_size;
  model::Model m(config, Device::cuda());
  m.init_weights(23);
  std::vector<std::vector<int32_t>> prompts(2);
  for (int i = 0; i < 2; ++i)
    for (int t = 0; t < 13 + 4 * i; ++t)
      prompts[i].push_back(static_cast<int32_t>(philox_u32(47, i, t) % vocab));
  struct Got {
    std::vector<int32_t> tokens;
    std::vector<infer::TokenLogprob> logprobs;
  };
  auto serve_both = [&](bool on_host) {
    infer::SchedulerOptions so;
    so.max_batch = 2;
    so.step_tokens = 8;  // prompts prefilled in pieces
    so.block_size = 8;
    so.max_context = 64;
    infer::Scheduler s(m, so);
    std::vector<Got> got(2);
    for (int i = 0; i < 2; ++i) {
      infer::Request r;
      r.prompt = prompts[i];
      r.max_tokens = 10;
      if (i == 1) {
        r.sampling.temperature = 0.8;
        r.sampling.seed = 5;
      }
      if (on_host && i == 0) {
        r.logprobs = 4;
        r.prompt_logprobs = true;
      }
      if (on_host && i == 1) r.adjustments.bias = {{0, 0.0f}};  // no change, but on the host
      Got* g = &got[i];
      r.on_token = [g](int32_t t) {
        g->tokens.push_back(t);
        return true;
      };
      r.on_logprob = [g](const infer::TokenLogprob& lp) { g->logprobs.push_back(lp); };
      s.submit(std::move(r));
    }
    while (s.step()) {
    }
    return got;
  };
  const std::vector<Got> device = serve_both(false), host = serve_both(true);
  EXPECT_EQ(host[0].tokens, device[0].tokens);
  EXPECT_EQ(host[1].tokens, device[1].tokens);
  ASSERT_EQ(host[0].tokens.size(), 10u);
  std::vector<int32_t> seq = prompts[0];
  seq.insert(seq.end(), host[0].tokens.begin(), host[0].tokens.end());
  ASSERT_EQ(host[0].logprobs.size(), seq.size() - 1);
  std::vector<float> full(seq.size() * vocab);
  m.logits(seq.data(), 1, static_cast<int64_t>(seq.size()), full.data());
  std::vector<float> got, want;
  for (size_t pos = 1; pos < seq.size(); ++pos) {
    const float* row = full.data() + (pos - 1) * vocab;
    double max = row[0], sum = 0;
    for (int64_t v = 0; v < vocab; ++v) max = std::max(max, static_cast<double>(row[v]));
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(row[v] - max);
    const infer::TokenLogprob& lp = host[0].logprobs[pos - 1];
    EXPECT_EQ(lp.token, seq[pos]);
    ASSERT_EQ(lp.top.size(), 4u);
    if (pos >= prompts[0].size()) {
      EXPECT_EQ(lp.top[0].first, lp.token) << "a greedy token is its row's most likely";
    }
    got.push_back(lp.logprob);
    want.push_back(static_cast<float>(row[seq[pos]] - max - std::log(sum)));
    // Each entry too: a wrong row at a few positions would hide in the sum (bf16 noise is ~0.01).
    EXPECT_NEAR(got.back(), want.back(), 0.1) << "position " << pos;
  }
  EXPECT_LT(rel_l2(got, want), 2e-2);
}

// A request held to a JSON schema on the GPU model (its steps on the host path): with a
// vocabulary of JSON fragments, every answer is a prefix of a matching text, and a whole one when
// it stopped; a request beside it, not held, keeps the device's own path. The schema admits no
// text longer than 22 of these fragments (`{ "ok" : false , "n" : false }` with the keys spelled
// a character a token, one space between tokens at most), so within 30 tokens every held request
// must have stopped.
TEST_F(GpuModel, ServingHeldToASchema) {
  const ModelConfig config = small_config();
  const int64_t vocab = config.vocab_size;
  model::Model m(config, Device::cuda());
  m.init_weights(29);
  // Every prefix the schema admits can be finished from these (a key begun with a bare quote
  // by "o", "k", "n"), so no request meets a dead end; "x", "1" and "[" are never admitted.
  const std::vector<std::string> fragments = {"{", "}",     "\"ok\"", ":",  "true", "false",
                                              ",", "\"n\"", " ",      "\"", "o",    "k",
                                              "n", "x",     "1",      "["};
  infer::TokenTexts texts(static_cast<size_t>(vocab));
  for (int64_t v = 1; v < vocab; ++v) texts[v] = fragments[v % fragments.size()];
  auto tokens = std::make_shared<infer::TokenTable>(texts);
  auto format = std::make_shared<infer::OutputFormat>(infer::OutputFormat{
      "",
      infer::JsonSchema::compile(
          nlohmann::json::parse(R"({"type": "object", "properties": {"ok": {"type": "boolean"},
              "n": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false})"),
          "s"),
      "", 1, ""});
  infer::SchedulerOptions so;
  so.max_batch = 4;
  so.block_size = 8;
  so.max_context = 64;
  infer::Scheduler s(m, so);
  std::vector<std::vector<int32_t>> got(4);
  for (int i = 0; i < 4; ++i) {
    infer::Request r;
    for (int t = 0; t < 7; ++t)
      r.prompt.push_back(static_cast<int32_t>(philox_u32(53, i, t) % vocab));
    r.max_tokens = 30;
    r.sampling.temperature = i == 0 ? 0.0 : 1.0;
    r.sampling.seed = static_cast<uint64_t>(i);
    if (i < 3) {
      r.stop_tokens = {0};
      r.format = format;
      r.tokens = tokens;
    }
    std::vector<int32_t>* g = &got[static_cast<size_t>(i)];
    r.on_token = [g](int32_t t) {
      g->push_back(t);
      return true;
    };
    s.submit(std::move(r));
  }
  while (s.step()) {
  }
  int whole = 0;
  for (int i = 0; i < 3; ++i) {
    std::string text;
    bool stopped = false;
    for (int32_t t : got[i]) {
      ASSERT_FALSE(stopped) << "a token after the stop token";
      stopped = t == 0;
      text += texts[static_cast<size_t>(t)];
    }
    infer::JsonPrefix json(*format->schema);
    EXPECT_TRUE(json.feed(text)) << "request " << i << ": " << text;
    if (stopped) {
      EXPECT_TRUE(json.complete()) << text;
      const nlohmann::json v = nlohmann::json::parse(text);
      EXPECT_TRUE(v["ok"].is_boolean()) << text;
      ++whole;
    }
  }
  EXPECT_EQ(whole, 3);
  EXPECT_EQ(got[3].size(), 30u);  // not held: the whole budget, any tokens
}

// Steps launched ahead on the GPU (ids taken on the device from the last step's sampled tokens,
// replayed from captured graphs) give the tokens of host-fed steps (testing::run_following_steps,
// also run on the CPU).
TEST_F(GpuModel, FollowingDecodeStepsEqualStepsFedTheirTokens) {
  const ModelConfig config = small_config();
  model::Model ahead(config, Device::cuda()), fed(config, Device::cuda());
  ahead.init_weights(17);
  fed.init_weights(17);
  std::vector<int32_t> prompt(9);
  for (size_t t = 0; t < prompt.size(); ++t)
    prompt[t] = static_cast<int32_t>(philox_u32(41, 0, t) % config.vocab_size);
  const testing::FollowingTokens t = testing::run_following_steps(
      ahead, fed, prompt, /*split=*/5, /*steps=*/8, /*block_size=*/8, /*table_width=*/3);
  EXPECT_EQ(t.ahead.size(), 16u);
  EXPECT_EQ(t.ahead, t.fed);
  EXPECT_GT(ahead.paged_graph_replays(), 0);
}

// load_model on a GPU makes an inference model (ModelState::inference): its bf16 weights are the
// master and what the kernels read, with no fp32 copy and no gradients: 8 bytes a parameter fewer
// than a trainable model (an fp32 master 4, its bf16 copy 2 and fp32 gradients 4, against the bf16
// weights 2), measured through the device allocator. Its logits are the trainable model's to bf16
// rounding (the router reads bf16 weights too).
TEST_F(GpuModel, InferenceModelHoldsItsBf16WeightsAlone) {
  const ModelConfig config = small_config();
  const Device gpu = Device::cuda();
  auto held_by = [&](auto make) {
    const size_t before = ops::device_memory(gpu).in_use;
    auto m = make();
    return std::make_pair(std::move(m), ops::device_memory(gpu).in_use - before);
  };
  auto [trained, trained_bytes] =
      held_by([&] { return std::make_unique<model::Model>(config, gpu); });
  trained->init_weights(21);
  const fs::path dir = fs::temp_directory_path() / ("moex_gpu_infer_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  model::save_model(*trained, kSmallConfig, dir.string());
  auto [loaded, loaded_bytes] = held_by([&] { return model::load_model(dir.string(), gpu); });
  fs::remove_all(dir);
  EXPECT_FALSE(loaded->trainable());
  EXPECT_EQ(loaded->params().flat().dtype(), DType::kBF16);
  EXPECT_EQ(&loaded->compute_params(), &loaded->params());
  const int64_t elements = trained->params().total_elements();
  EXPECT_EQ(loaded->params().flat().nbytes(), static_cast<size_t>(2 * elements));
  // Both hold a step arena of the same size; the allocator rounds each buffer up (to 2 MiB steps
  // above 1 MiB), so the trainable model's extra fp32 master and gradients take at least 8 bytes
  // an element and at most three roundings more.
  const size_t saved = trained_bytes - loaded_bytes;
  std::printf("[ info ] inference model: %zu bytes held against %zu (%lld elements)\n",
              loaded_bytes, trained_bytes, static_cast<long long>(elements));
  EXPECT_GE(saved, static_cast<size_t>(8 * elements));
  EXPECT_LE(saved, static_cast<size_t>(8 * elements) + (size_t{6} << 20));
  std::vector<int32_t> ids, targets;
  counting_batch(2, 32, config.vocab_size, 9, &ids, &targets);
  std::vector<float> a(2 * 32 * config.vocab_size), b(a.size());
  trained->logits(ids.data(), 2, 32, a.data());
  loaded->logits(ids.data(), 2, 32, b.data());
  EXPECT_LT(rel_l2(b, a), 1e-2);
}

// An inference model's dropless MoE layers over more tokens than the decode kernels take (packed
// expert rows, GEMM operands built on the host): no expert weight gradients exist to point at
// (a distillation teacher hit this), and the logits agree with the trainable model's.
TEST_F(GpuModel, InferenceModelRunsDroplessExpertsOverManyTokens) {
  const ModelConfig config =
      small_config_with(R"("renormalize": true)", R"("renormalize": true, "dropless": true)");
  const Device gpu = Device::cuda();
  model::Model trained(config, gpu);
  trained.init_weights(23);
  model::Model inference(config, gpu, nullptr, {}, false, model::ModelState::inference(gpu));
  inference.copy_weights_from(trained);
  std::vector<int32_t> ids, targets;
  counting_batch(2, 48, config.vocab_size, 10, &ids, &targets);  // 96 tokens
  std::vector<float> a(2 * 48 * config.vocab_size), b(a.size());
  trained.logits(ids.data(), 2, 48, a.data());
  inference.logits(ids.data(), 2, 48, b.data());
  EXPECT_LT(rel_l2(b, a), 1e-2);
}

// A checkpoint saved from a GPU model (fp32 master, or bf16 master: widened exactly on the way
// out) loads on the CPU with the same weights, and back into a GPU model of the same master dtype
// with the same bits.
TEST_F(GpuModel, GpuCheckpointLoadsOnTheCpu) {
  const ModelConfig config = small_config();
  for (const DType master : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string("master ") + dtype_name(master));
    const model::ModelState dtypes{master, DType::kF32};
    model::Model gpu_model(config, Device::cuda(), nullptr, {}, false, dtypes);
    gpu_model.init_weights(11);
    train::OptimizerConfig oc;
    train::AdamW adam(gpu_model.params(), oc);
    std::vector<int32_t> ids, targets;
    counting_batch(4, 32, config.vocab_size, 2, &ids, &targets);
    for (int step = 0; step < 3; ++step) {  // weights that no longer equal their init
      gpu_model.zero_grad();
      model::ForwardOptions opt;
      opt.training = true;
      opt.for_backward = true;
      gpu_model.forward(ids.data(), targets.data(), 4, 32, opt);
      gpu_model.backward();
      adam.step(gpu_model, 1e-3, step + 1);
    }
    const fs::path dir =
        fs::temp_directory_path() / ("moex_gpu_ckpt_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    model::save_model(gpu_model, kSmallConfig, dir.string());
    auto cpu_model = model::load_model(dir.string());
    const std::vector<float> saved = widened(gpu_model.params().flat());
    EXPECT_EQ(host_floats(cpu_model->params().flat()), saved);
    std::vector<float> a(4 * 32 * config.vocab_size), b(a.size());
    gpu_model.logits(ids.data(), 4, 32, a.data());
    cpu_model->logits(ids.data(), 4, 32, b.data());
    EXPECT_LT(rel_l2(a, b), 2e-2);
    model::Model reloaded(config, Device::cuda(), nullptr, {}, false, dtypes);
    model::load_weights(reloaded, (dir / io::kSafetensorsSingleName).string());
    EXPECT_EQ(widened(reloaded.params().flat()), saved);
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace moex
