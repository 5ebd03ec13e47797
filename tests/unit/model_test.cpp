// The CPU model: loss gradient against central differences, activation checkpointing giving the
// same gradients, KV-cache decoding giving the full forward's logits, and config errors.
#include "model/model.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/rng.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"
#include "model/tensor_parallel.h"
#include "ops/elementwise.h"

namespace moex::model {
namespace {

// fill_normal fills chunks in parallel: the numbers are those of one serial pass over the stream
// (a Philox normal per element, two draws each), from any start, with any thread count.
TEST(FillNormal, ParallelChunksGiveTheSerialStream) {
  const int64_t n = 300001, first = 12345;
  std::vector<float> want(n);
  Rng rng(7, 3);
  rng.set_state(3, 2 * first);
  for (float& v : want) v = 0.5f * rng.normal();
  for (const int threads : {1, 3}) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> got(n, -1.0f);
    fill_normal(got.data(), n, 0.5f, 7, 3, first);
    omp_set_num_threads(saved);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0) << threads << " threads";
  }
}

ModelConfig tiny_config(const std::string& extra_moe, bool learned_positions = false) {
  const std::string text = std::string(R"({
    "vocab_size": 23, "hidden_size": 16, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 16, "ffn_size": 24, "norm": ")") +
                           (learned_positions ? "layernorm" : "rmsnorm") + R"(", "activation": ")" +
                           (learned_positions ? "gelu" : "swiglu") + R"(", "positions": ")" +
                           (learned_positions ? "learned" : "rope") + R"(", "init_std": 0.2,
    "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 12, "capacity_factor": 2.0,
            "aux_loss_coef": 0.1, "z_loss_coef": 0.01)" +
                           extra_moe + R"(}})";
  // extra_moe may repeat a field to override it: re-dumped, the last value stands alone.
  return ModelConfig::from_json(
      JsonReader::from_string(nlohmann::json::parse(text).dump(), "tiny.json"));
}

struct Batch {
  std::vector<int32_t> ids, targets;
  int64_t batch = 2, seq_len = 7;
};

Batch make_batch(int64_t vocab) {
  Batch b;
  for (int64_t i = 0; i < b.batch * b.seq_len; ++i) {
    b.ids.push_back(static_cast<int32_t>(philox_u32(5, 0, i) % vocab));
    b.targets.push_back(static_cast<int32_t>(philox_u32(5, 1, i) % vocab));
  }
  b.targets[3] = -100;  // an ignored position
  return b;
}

double total_loss(Model& m, const Batch& b, bool for_backward = false) {
  ForwardOptions opt;
  opt.for_backward = for_backward;
  const LossResult r = m.forward(b.ids.data(), b.targets.data(), b.batch, b.seq_len, opt);
  return r.loss + r.weighted_aux;
}

struct Derivatives {
  double numeric = 0, analytic = 0;
};

// d/dh L(w + h u) at h = 0 by central differences against <grad, u>, for a random direction u
// over the n weights at w (restored afterwards). h must be small enough that no top-k choice
// flips inside [-h, h] (a flip is a jump in the loss) and large enough for float arithmetic.
Derivatives directional(Model& m, const Batch& b, float* w, const float* grad, int64_t n,
                        uint64_t seed, float h) {
  const std::vector<float> u = testing::random_vector<float>(static_cast<size_t>(n), seed);
  Derivatives d;
  for (int64_t i = 0; i < n; ++i) d.analytic += static_cast<double>(grad[i]) * u[i];
  const std::vector<float> saved(w, w + n);
  auto loss_at = [&](float step) {
    for (int64_t i = 0; i < n; ++i) w[i] = saved[i] + step * u[i];
    return total_loss(m, b);
  };
  d.numeric = (loss_at(h) - loss_at(-h)) / (2.0 * h);
  std::copy(saved.begin(), saved.end(), w);
  return d;
}

// A model with its gradient for the test batch computed.
struct Evaluated {
  std::unique_ptr<Model> model;
  Batch batch;
};
Evaluated evaluated(const ModelConfig& config) {
  Evaluated e{std::make_unique<Model>(config), make_batch(config.vocab_size)};
  e.model->init_weights(3);
  total_loss(*e.model, e.batch, /*for_backward=*/true);
  e.model->backward();
  return e;
}

// One random direction over all parameters at once.
void check_directional_derivative(const ModelConfig& config) {
  Evaluated e = evaluated(config);
  const Derivatives d = directional(*e.model, e.batch, e.model->params().flat().data<float>(),
                                    e.model->grads().flat().data<float>(),
                                    e.model->params().flat().numel(), 11, 1e-3f);
  // float arithmetic: agreement to ~1e-4 relative; a missing term (aux, z-loss, a block) is >1e-2
  EXPECT_NEAR(d.numeric, d.analytic, 1e-3 * std::max(1.0, std::fabs(d.analytic)));
}

// The same check one parameter tensor at a time, so that a wrong or missing gradient of one small
// tensor (a norm weight, the router, a bias) cannot hide inside the global direction.
void check_each_parameter(const ModelConfig& config) {
  Evaluated e = evaluated(config);
  const ParamBuffer& params = e.model->params();
  for (int i = 0; i < params.size(); ++i) {
    const Derivatives d = directional(*e.model, e.batch, params.tensor(i).data<float>(),
                                      e.model->grads().tensor(i).data<float>(),
                                      params.tensor(i).numel(), 100 + i, 3e-4f);
    EXPECT_NEAR(d.numeric, d.analytic, 3e-3 * std::fabs(d.analytic) + 5e-4) << params.name(i);
  }
}

TEST(Model, EachParameterGradientMatchesFiniteDifferences) {
  check_each_parameter(tiny_config(R"(, "shared_ffn_size": 8, "shared_gate": true)"));
  check_each_parameter(tiny_config(R"(, "top_k": 1, "residual": true, "num_experts": 2)", true));
}

TEST(Model, GradientMatchesFiniteDifferencesRopeSwiGLU) {
  check_directional_derivative(tiny_config(""));
}

TEST(Model, GradientMatchesFiniteDifferencesLearnedGeluResidual) {
  check_directional_derivative(
      tiny_config(R"(, "top_k": 1, "residual": true, "num_experts": 2)", true));
}

TEST(Model, GradientMatchesFiniteDifferencesSharedExpert) {
  check_directional_derivative(
      tiny_config(R"(, "shared_ffn_size": 8, "shared_gate": true, "renormalize": true)"));
}

// Under gradient accumulation every term of the objective, the MoE aux and z losses included,
// is weighted by loss_scale: the gradients scale exactly.
TEST(Model, LossScaleWeighsEveryTerm) {
  const ModelConfig config = tiny_config(R"(, "aux_loss_coef": 0.5, "z_loss_coef": 0.5)");
  const Batch b = make_batch(config.vocab_size);
  std::vector<float> grads[2];
  for (int i = 0; i < 2; ++i) {
    Model m(config);
    m.init_weights(8);
    ForwardOptions opt;
    opt.for_backward = true;
    opt.loss_scale = i == 0 ? 1.0 : 0.25;
    m.forward(b.ids.data(), b.targets.data(), b.batch, b.seq_len, opt);
    m.backward();
    const float* g = m.grads().flat().data<float>();
    grads[i].assign(g, g + m.grads().flat().numel());
  }
  double max_err = 0, max_abs = 0;
  for (size_t j = 0; j < grads[0].size(); ++j) {
    max_err = std::max(max_err, static_cast<double>(std::fabs(0.25f * grads[0][j] - grads[1][j])));
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(grads[0][j])));
  }
  EXPECT_GT(max_abs, 0.0);
  EXPECT_LE(max_err, 1e-6 * max_abs);
}

TEST(Model, ActivationCheckpointingGivesTheSameGradients) {
  const ModelConfig config = tiny_config(R"(, "jitter_eps": 0.01)");
  const Batch b = make_batch(config.vocab_size);
  std::vector<float> grads[2];
  double losses[2];
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    Model m(config);
    m.init_weights(4);
    ForwardOptions opt;
    opt.training = true;
    opt.for_backward = true;
    opt.checkpoint_activations = ckpt == 1;
    opt.seed = 9;
    const LossResult r = m.forward(b.ids.data(), b.targets.data(), b.batch, b.seq_len, opt);
    losses[ckpt] = r.loss + r.weighted_aux;
    m.backward();
    const float* g = m.grads().flat().data<float>();
    grads[ckpt].assign(g, g + m.grads().flat().numel());
  }
  EXPECT_EQ(losses[0], losses[1]);
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < grads[0].size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(grads[0][i] - grads[1][i])));
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(grads[0][i])));
  }
  EXPECT_GT(max_abs, 0.0);
  EXPECT_LE(max_diff, 1e-6 * max_abs);
}

// The configs of the gradient-write tests: a tied head (written by the head, then added to by
// the embedding) with a selection bias that gets no gradient, and learned positions with
// LayerNorm biases. Two micro-batches for them.
std::vector<ModelConfig> gradient_write_configs() {
  std::vector<ModelConfig> configs = {
      tiny_config(R"(, "score_func": "sigmoid", "selection_bias": true)"),
      tiny_config("", /*learned_positions=*/true)};
  configs[0].tie_embeddings = true;
  configs[0].validate();
  return configs;
}

std::array<Batch, 2> two_batches(int64_t vocab) {
  std::array<Batch, 2> batches = {make_batch(vocab), make_batch(vocab)};
  std::reverse(batches[1].ids.begin(), batches[1].ids.end());
  return batches;
}

// zero_grad() leaves the buffer as it is and the first write of each gradient overwrites it
// (model/gradient_writes.h). Against the buffer zeroed and every write adding: after one and after
// two micro-batches the gradients are the same bits, with the buffer full of NaN or of the last
// step's gradients beforehand. The configs cover a tied head (written by the head, then added to
// by the embedding), learned positions and LayerNorm biases, and a selection bias that gets no
// gradient at all.
TEST(Model, GradientsOverwriteWhatZeroGradLeft) {
  for (const ModelConfig& config : gradient_write_configs()) {
    const std::array<Batch, 2> batches = two_batches(config.vocab_size);
    auto micro_batch = [&](Model& m, const Batch& b) {
      total_loss(m, b, /*for_backward=*/true);
      m.backward();
      const Tensor& g = m.grads().flat();
      return std::vector<float>(g.data<float>(), g.data<float>() + g.numel());
    };
    Model ref(config);
    ref.init_weights(3);
    ops::zero(ref.grads().flat());  // every entry written: each backward adds
    const std::vector<float> want1 = micro_batch(ref, batches[0]);
    const std::vector<float> want2 = micro_batch(ref, batches[1]);
    double largest = 0;
    for (float v : want2) largest = std::max(largest, static_cast<double>(std::fabs(v)));
    ASSERT_GT(largest, 0.0);

    Model m(config);
    m.init_weights(3);
    const ParamBuffer& grads = m.grads();
    for (int i = 0; i < grads.size(); ++i) {  // the entries (the padding between stays zero)
      float* g = grads.tensor(i).data<float>();
      std::fill(g, g + grads.tensor(i).numel(), std::nanf(""));
    }
    for (int step = 0; step < 2; ++step) {  // NaN left over, then the first step's gradients
      m.zero_grad();
      EXPECT_EQ(micro_batch(m, batches[0]), want1) << "step " << step;
      EXPECT_EQ(micro_batch(m, batches[1]), want2) << "step " << step;
    }
    // A read between zero_grad and backward sees zeros.
    m.zero_grad();
    const Tensor& flat = m.grads().flat();
    for (int64_t i = 0; i < flat.numel(); ++i) ASSERT_EQ(flat.data<float>()[i], 0.0f);
  }
}

// Streamed gradients (ModelState::stream_gradients, ZeRO stage 2): what the sink gets, summed per
// bucket, must be what the buffered model holds after the same micro-batches: bit for bit after
// one (each bucket is written by the same ops), within float rounding after two (the buffered
// model adds the second micro-batch's writes into the first's; the sink adds whole buckets). The
// blocks share one window, so every block's backward starts on the other block's leftovers, and
// a second step on everything the first left. Blocks go to the sink at every micro-batch, the
// edges (embedding, head) once a step, and the model holds only those buckets' storage.
struct RecordingSink : GradientSink {
  const ParamBuffer* layout = nullptr;
  const std::vector<EntryRange>* buckets = nullptr;
  std::vector<float> sums;  // [total] in the buffer's layout, padding left at zero
  std::vector<int> takes;   // [buckets]
  void take(int bucket, const Tensor& grads) override {
    const EntryRange& r = (*buckets)[static_cast<size_t>(bucket)];
    ++takes[static_cast<size_t>(bucket)];
    const int64_t base = layout->offset(r.first);
    for (int i = r.first; i <= r.last; ++i)
      for (int64_t k = 0; k < layout->tensor(i).numel(); ++k)
        sums[layout->offset(i) + k] += grads.data<float>()[layout->offset(i) - base + k];
  }
};

TEST(Model, StreamedGradientsAreTheBufferedOnes) {
  for (const ModelConfig& config : gradient_write_configs()) {
    const std::array<Batch, 2> batches = two_batches(config.vocab_size);
    Model ref(config);
    ref.init_weights(3);
    ModelState state;
    state.stream_gradients = true;
    Model m(config, Device::cpu(), nullptr, {}, false, state);
    m.init_weights(3);
    ASSERT_TRUE(m.streams_gradients());
    const std::vector<EntryRange>& buckets = m.gradient_buckets();
    ASSERT_EQ(buckets.size(), 4u);  // embedding, two blocks, head
    RecordingSink sink;
    sink.layout = &m.params();
    sink.buckets = &buckets;
    m.set_gradient_sink(&sink);
    for (int step = 0; step < 2; ++step) {
      for (const int micro_batches : {1, 2}) {
        sink.sums.assign(static_cast<size_t>(m.params().total_elements()), 0.0f);
        sink.takes.assign(buckets.size(), 0);
        ref.zero_grad();
        m.zero_grad();
        for (int b = 0; b < micro_batches; ++b) {
          total_loss(ref, batches[b], /*for_backward=*/true);
          ref.backward();
          total_loss(m, batches[b], /*for_backward=*/true);
          m.backward();
        }
        m.finish_gradients();
        EXPECT_EQ(sink.takes, (std::vector<int>{1, micro_batches, micro_batches, 1}));
        const Tensor& want = ref.grads().flat();
        double largest = 0, worst = 0;
        for (int64_t i = 0; i < want.numel(); ++i) {
          const double w = want.data<float>()[i], g = sink.sums[static_cast<size_t>(i)];
          largest = std::max(largest, std::fabs(w));
          worst = std::max(worst, std::fabs(w - g));
        }
        ASSERT_GT(largest, 0.0);
        if (micro_batches == 1)
          EXPECT_EQ(worst, 0.0) << "step " << step;
        else
          EXPECT_LE(worst, 1e-6 * largest) << "step " << step;
      }
    }
    const ParamBuffer& p = m.params();
    int64_t window = 0;
    for (size_t b = 1; b + 1 < buckets.size(); ++b)
      window = std::max(window, p.range_elements(buckets[b].first, buckets[b].last));
    const int64_t edges = p.range_elements(buckets[0].first, buckets[0].last) +
                          p.range_elements(buckets[3].first, buckets[3].last);
    EXPECT_EQ(m.gradient_bytes(), 4 * (edges + window));
    EXPECT_EQ(ref.gradient_bytes(), 4 * p.total_elements());
    EXPECT_LT(m.gradient_bytes(), ref.gradient_bytes());
    testing::expect_error_naming([&] { m.grads(); }, {"streams its gradients"});
  }
}

// A model that keeps its whole gradient buffer, with a sink (parallel.overlap_comm): each bucket
// goes to the sink once a step, the blocks (last first) as their backward ends in the backward
// marked last_of_step, the edges in finish_gradients; or every bucket in finish_gradients when no
// backward was so marked. What the sink got at each take must already be the bucket's final
// gradients: bit for bit the buffer of a model without a sink after the same micro-batches.
struct OrderSink : GradientSink {
  std::vector<int> order;
  std::vector<std::vector<float>> got;  // [buckets] a copy at the take
  void take(int bucket, const Tensor& grads) override {
    order.push_back(bucket);
    got.at(static_cast<size_t>(bucket))
        .assign(grads.data<float>(), grads.data<float>() + grads.numel());
  }
};

TEST(Model, SinkOfAWholeBufferGetsEachBucketOnceItIsFinal) {
  for (const ModelConfig& config : gradient_write_configs()) {
    const std::array<Batch, 2> batches = two_batches(config.vocab_size);
    Model ref(config), m(config);
    ref.init_weights(3);
    m.init_weights(3);
    const std::vector<EntryRange>& buckets = m.gradient_buckets();
    ASSERT_EQ(buckets.size(), 4u);  // embedding, two blocks, head
    OrderSink sink;
    m.set_gradient_sink(&sink);
    for (const bool mark_last : {true, false}) {
      SCOPED_TRACE(mark_last ? "last backward marked" : "no backward marked");
      sink.order.clear();
      sink.got.assign(buckets.size(), {});
      ref.zero_grad();
      m.zero_grad();
      for (int b = 0; b < 2; ++b) {
        total_loss(ref, batches[b], /*for_backward=*/true);
        ref.backward();
        total_loss(m, batches[b], /*for_backward=*/true);
        m.backward(/*last_of_step=*/mark_last && b == 1);
      }
      EXPECT_EQ(sink.order, (mark_last ? std::vector<int>{2, 1} : std::vector<int>{}));
      m.finish_gradients();
      ref.finish_gradients();
      EXPECT_EQ(sink.order, (std::vector<int>{2, 1, 0, 3}));
      const ParamBuffer& want = ref.grads();
      for (size_t b = 0; b < buckets.size(); ++b) {
        const Tensor bucket = want.flat_range(buckets[b].first, buckets[b].last);
        EXPECT_EQ(sink.got[b],
                  std::vector<float>(bucket.data<float>(), bucket.data<float>() + bucket.numel()))
            << "bucket " << b;
      }
      EXPECT_EQ(std::vector<float>(m.grads().flat().data<float>(),
                                   m.grads().flat().data<float>() + m.grads().flat().numel()),
                std::vector<float>(want.flat().data<float>(),
                                   want.flat().data<float>() + want.flat().numel()));
    }
  }
}

// init_weights(seed, keep_drawn = false) draws one gradient bucket at a time through a host
// window: the weights are the whole buffer's draw, bit for bit (tied head, learned positions and
// LayerNorm biases included), and nothing is returned.
TEST(Model, WindowedInitDrawsTheWholeBuffersWeights) {
  std::vector<ModelConfig> configs = {tiny_config(""), tiny_config("", /*learned=*/true)};
  configs[0].tie_embeddings = true;
  for (const ModelConfig& config : configs) {
    Model whole(config), windowed(config);
    const ParamBuffer drawn = whole.init_weights(7);
    EXPECT_TRUE(windowed.init_weights(7, false).flat().defined() == false);
    const Tensor& a = whole.params().flat();
    const Tensor& b = windowed.params().flat();
    ASSERT_EQ(a.numel(), b.numel());
    EXPECT_EQ(std::vector<float>(a.data<float>(), a.data<float>() + a.numel()),
              std::vector<float>(b.data<float>(), b.data<float>() + b.numel()));
    EXPECT_EQ(drawn.flat().raw_data(), a.raw_data()) << "a CPU model's drawn buffer is its own";
    // The draw is not all zeros: the embedding and a block's weights moved.
    EXPECT_NE(b.data<float>()[0], 0.0f);
  }
}

// bf16 gradients and master weights (optimizer.grads_dtype, master_dtype) are built for one GPU:
// a CPU model refuses each by name. The GPU side: tests/gpu/model_cuda_test.cpp
// Bf16GradientsAreTheFp32GradientsRounded, Bf16MasterWeightsLoadSaveAndTrain.
TEST(Model, Bf16StateIsRefusedOnTheCpu) {
  for (const auto& [dtypes, what] :
       {std::pair{ModelState{DType::kF32, DType::kBF16}, "bf16 gradients"},
        std::pair{ModelState{DType::kBF16, DType::kF32}, "bf16 master weights"}})
    testing::expect_error_naming(
        [&] { Model cpu(tiny_config(""), Device::cpu(), nullptr, {}, false, dtypes); }, {what});
}

// An inference model (ModelState::inference, what load_model makes) computes what a trainable
// model with its weights computes, holds no gradient buffer, and refuses what would need one, each
// with an error that says why.
TEST(Model, InferenceModelHasNoGradientsAndRefusesBackward) {
  const ModelConfig config = tiny_config("");
  Model trainable(config);
  trainable.init_weights(4);
  Model inference(config, Device::cpu(), nullptr, {}, false, ModelState::inference(Device::cpu()));
  inference.copy_weights_from(trainable);
  EXPECT_TRUE(trainable.trainable());
  EXPECT_FALSE(inference.trainable());
  const Batch b = make_batch(config.vocab_size);
  std::vector<float> want(b.batch * b.seq_len * config.vocab_size), got(want.size());
  trainable.logits(b.ids.data(), b.batch, b.seq_len, want.data());
  inference.logits(b.ids.data(), b.batch, b.seq_len, got.data());
  EXPECT_EQ(got, want);
  inference.zero_grad();  // a no-op
  ForwardOptions opt;
  opt.for_backward = true;
  testing::expect_error_naming([&] { inference.grads(); }, {"made for inference"});
  testing::expect_error_naming(
      [&] { inference.forward(b.ids.data(), b.targets.data(), b.batch, b.seq_len, opt); },
      {"made for inference"});
  opt.for_backward = false;
  const LossResult r = inference.forward(b.ids.data(), b.targets.data(), b.batch, b.seq_len, opt);
  EXPECT_NEAR(r.loss,
              trainable.forward(b.ids.data(), b.targets.data(), b.batch, b.seq_len, opt).loss,
              1e-12);
  testing::expect_error_naming([&] { inference.backward(); }, {"for_backward"});
}

TEST(Model, KVCacheDecodeMatchesFullForward) {
  for (bool learned : {false, true}) {
    const ModelConfig config = tiny_config(R"(, "capacity_factor": 4.0)", learned);
    Model m(config);
    m.init_weights(6);
    const Batch b = make_batch(config.vocab_size);
    const int64_t v = config.vocab_size;
    std::vector<float> full(b.batch * b.seq_len * v);
    m.logits(b.ids.data(), b.batch, b.seq_len, full.data());
    // prefill 3 tokens, then one at a time
    KVCache cache = m.make_cache(b.batch, b.seq_len);
    std::vector<float> last(b.batch * v);
    auto tokens = [&](int64_t start, int64_t len) {
      std::vector<int32_t> out;
      for (int64_t s = 0; s < b.batch; ++s)
        for (int64_t t = start; t < start + len; ++t) out.push_back(b.ids[s * b.seq_len + t]);
      return out;
    };
    for (int64_t pos = 0; pos < b.seq_len;) {
      const int64_t len = pos == 0 ? 3 : 1;
      const std::vector<int32_t> chunk = tokens(pos, len);
      m.forward_cached(chunk.data(), b.batch, len, cache, last.data());
      pos += len;
      for (int64_t s = 0; s < b.batch; ++s) {
        const float* want = full.data() + (s * b.seq_len + pos - 1) * v;
        for (int64_t j = 0; j < v; ++j)
          ASSERT_NEAR(last[s * v + j], want[j], 1e-4) << "pos " << pos;
      }
    }
  }
}

TEST(ModelConfig, UnknownAndBadFieldsNameFileAndField) {
  auto error_of = [](const std::string& text) {
    try {
      ModelConfig::from_json(JsonReader::from_string(text, "bad.json"));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string base =
      R"("vocab_size": 10, "hidden_size": 8, "num_layers": 2, "num_heads": 2, "max_seq_len": 8)";
  EXPECT_NE(
      error_of("{" + base + R"(, "hiden_size": 3})").find("bad.json: unknown field 'hiden_size'"),
      std::string::npos);
  EXPECT_NE(error_of("{" + base + R"(, "moe": {"num_experts": 4, "topk": 2}})").find("moe.topk"),
            std::string::npos);
  EXPECT_NE(error_of("{" + base + R"(, "num_kv_heads": 3})").find("num_kv_heads"),
            std::string::npos);
  EXPECT_NE(error_of("{" + base + R"(, "moe": {"num_experts": 2, "top_k": 3}})").find("top_k"),
            std::string::npos);
  EXPECT_NE(error_of("{" + base + R"(, "moe": {"layer_freq": 1, "num_experts": [4, 8, 16]}})")
                .find("3 entries"),
            std::string::npos);
}

TEST(ModelConfig, PyramidExpertCounts) {
  const std::string text =
      R"({"vocab_size": 10, "hidden_size": 8, "num_layers": 4, "num_heads": 2, "max_seq_len": 8,
    "moe": {"layer_freq": 2, "num_experts": [4, 8], "residual": true}})";
  const ModelConfig c = ModelConfig::from_json(JsonReader::from_string(text, "pr.json"));
  EXPECT_FALSE(c.layers[0].moe);
  EXPECT_TRUE(c.layers[1].moe);
  EXPECT_EQ(c.layers[1].moe_config.num_experts, 4);
  EXPECT_EQ(c.layers[3].moe_config.num_experts, 8);
  EXPECT_TRUE(c.layers[3].moe_config.residual);
}

}  // namespace
}  // namespace moex::model
