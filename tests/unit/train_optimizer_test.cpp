// AdamW over a real model's parameters (train/optimizer.h) against a hand-written AdamW in
// double: decoupled weight decay on matrices only (embeddings, projections, router, experts),
// none on norm weights and biases; global-norm clipping; bias correction over two steps.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/json_reader.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace moex::train {
namespace {

// Every kind of parameter the model has: LayerNorm (weight and bias), q/k/v biases, per-head
// q/k norms, embeddings and head, attention and dense FFN matrices, router, stacked experts, and
// the PR-MoE residual MLP with its mixing coefficients.
ModelConfig config() {
  const std::string text = R"({
    "vocab_size": 29, "hidden_size": 16, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
    "max_seq_len": 16, "ffn_size": 24, "norm": "layernorm", "qkv_bias": true, "qk_norm": "per_head",
    "moe": {"layer_freq": 2, "num_experts": 4, "top_k": 2, "ffn_size": 12, "residual": true}})";
  return ModelConfig::from_json(JsonReader::from_string(text, "optimizer_test.json"));
}

// Decided from the name alone, independently of the tensor's rank: norm weights and biases are
// not decayed, everything else is a weight matrix (or a stack of them) and is.
bool should_decay(const std::string& name) {
  const bool bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  const bool norm = name.find("norm") != std::string::npos;
  return !bias && !norm;
}

struct Reference {
  std::vector<double> p, m, v;
};

// torch.optim.AdamW on every element, the gradient scaled by the global-norm clip first.
void adamw_reference(std::vector<Reference>& state, const std::vector<std::vector<double>>& grads,
                     const std::vector<bool>& decay, const OptimizerConfig& c, double lr,
                     int64_t step) {
  double sq = 0;
  for (const auto& g : grads)
    for (double x : g) sq += x * x;
  const double norm = std::sqrt(sq);
  const double scale = norm > c.grad_clip ? c.grad_clip / (norm + 1e-6) : 1.0;
  const double bc1 = 1 - std::pow(c.beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(c.beta2, static_cast<double>(step));
  for (size_t t = 0; t < state.size(); ++t) {
    Reference& s = state[t];
    for (size_t i = 0; i < s.p.size(); ++i) {
      const double g = grads[t][i] * scale;
      if (decay[t]) s.p[i] -= lr * c.weight_decay * s.p[i];
      s.m[i] = c.beta1 * s.m[i] + (1 - c.beta1) * g;
      s.v[i] = c.beta2 * s.v[i] + (1 - c.beta2) * g * g;
      const double m_hat = s.m[i] / bc1, v_hat = s.v[i] / bc2;
      s.p[i] -= lr * m_hat / (std::sqrt(v_hat) + c.eps);
    }
  }
}

// zero_tile > 0: the ZeRO optimizer (one rank) stepping in pieces of that many elements, which
// split tensors and cross from one tensor to the next, so each piece carries several tensors'
// weight decays.
void check_against_hand_written_adamw(int64_t zero_tile) {
  model::Model model(config());
  model.init_weights(1);
  ParamBuffer& params = model.params();
  ParamBuffer& grads = model.grads();
  const int n = params.size();

  // Parameters of order 1, so that the decay term lr * weight_decay * p is far above float
  // rounding wherever it applies.
  std::vector<Reference> ref(static_cast<size_t>(n));
  std::vector<bool> decay(static_cast<size_t>(n));
  int decayed = 0, kept = 0, norm_weights = 0, biases = 0;
  for (int t = 0; t < n; ++t) {
    const Tensor& p = params.tensor(t);
    float* pd = static_cast<float*>(p.raw_data());
    for (int64_t i = 0; i < p.numel(); ++i) pd[i] = 2 * philox_uniform(7, t, i) - 1;
    ref[t].p.assign(pd, pd + p.numel());
    ref[t].m.assign(p.numel(), 0.0);
    ref[t].v.assign(p.numel(), 0.0);
    decay[t] = should_decay(params.name(t));
    (decay[t] ? decayed : kept) += 1;
    norm_weights += params.name(t).find("norm") != std::string::npos;
    biases += !decay[t] && params.name(t).find("bias") != std::string::npos;
  }
  // The model has both kinds, and both kinds of undecayed tensor, or the test proves nothing.
  ASSERT_GT(decayed, 0);
  ASSERT_GT(norm_weights, 0);
  ASSERT_GT(biases, 0);
  ASSERT_EQ(decayed + kept, n);

  OptimizerConfig c;
  c.lr = 0.05;
  c.weight_decay = 0.5;  // the decay moves p by 2.5% per step, the Adam update by about lr
  c.grad_clip = 1.0;     // the random gradients' norm is far above 1: clipping is on
  ZeroConfig zero;
  zero.stage = 1;
  zero.dp = zero.edp = &dist::Communicator::local();
  zero.tile_elements = zero_tile;
  AdamW adam = zero_tile > 0 ? AdamW(model, c, zero) : AdamW(params, c);
  for (int64_t step = 1; step <= 2; ++step) {
    std::vector<std::vector<double>> g(static_cast<size_t>(n));
    for (int t = 0; t < n; ++t) {
      const Tensor& gt = grads.tensor(t);
      float* gd = static_cast<float*>(gt.raw_data());
      for (int64_t i = 0; i < gt.numel(); ++i) gd[i] = 2 * philox_uniform(8 + step, t, i) - 1;
      g[t].assign(gd, gd + gt.numel());
    }
    const double lr = step == 1 ? c.lr : 0.5 * c.lr;
    if (zero_tile > 0)
      adam.step(model, lr, step);
    else
      adam.step(params, grads, lr, step);
    adamw_reference(ref, g, decay, c, lr, step);

    for (int t = 0; t < n; ++t) {
      const Tensor& p = params.tensor(t);
      const float* pd = static_cast<const float*>(p.raw_data());
      double err = 0, decay_effect = 0;
      for (int64_t i = 0; i < p.numel(); ++i) {
        err = std::max(err, std::fabs(pd[i] - ref[t].p[i]));
        decay_effect = std::max(decay_effect, lr * c.weight_decay * std::fabs(ref[t].p[i]));
      }
      // Float against double: a few ulps of values below 2. The decay of one step is at least
      // 100 times that on every tensor, so decaying a norm or bias, or not decaying a matrix,
      // fails here.
      ASSERT_GT(decay_effect, 100 * 1e-6) << params.name(t);
      EXPECT_LT(err, 1e-6) << params.name(t) << " (ndim " << p.ndim() << ", "
                           << (decay[t] ? "decayed" : "not decayed") << ") step " << step;
    }
  }
}

TEST(TrainOptimizer, WeightDecayOnMatricesOnlyMatchesAHandWrittenAdamW) {
  check_against_hand_written_adamw(0);
}

TEST(TrainOptimizer, ZeroTiledStepMatchesAHandWrittenAdamW) {
  check_against_hand_written_adamw(37);
}

TEST(TrainOptimizer, RankDecidesDecayForAnyName) {
  // The rule is the tensor's rank (>= 2 dims decays), so a 1-D tensor of any name is never
  // decayed and a 2-D or 3-D one always is: with a zero gradient Adam moves nothing and
  // p * (1 - lr * weight_decay) is all that is left.
  ParamBuffer params, grads;
  for (ParamBuffer* b : {&params, &grads}) {
    b->declare("vector", Shape{5});
    b->declare("matrix", Shape{3, 4});
    b->declare("stack", Shape{2, 3, 2});
    b->allocate(DType::kF32);
  }
  float* p = params.flat().data<float>();
  for (int64_t i = 0; i < params.flat().numel(); ++i) p[i] = 1.0f + 0.01f * static_cast<float>(i);
  std::vector<float> before(p, p + params.flat().numel());
  OptimizerConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.2;
  AdamW adam(params, c);
  EXPECT_EQ(adam.step(params, grads, c.lr, 1), 0.0);  // zero gradients: norm 0
  for (int t = 0; t < params.size(); ++t) {
    const Tensor& x = params.tensor(t);
    const int64_t offset = static_cast<float*>(x.raw_data()) - p;
    const double factor = x.ndim() >= 2 ? 1 - c.lr * c.weight_decay : 1.0;
    for (int64_t i = 0; i < x.numel(); ++i)
      EXPECT_FLOAT_EQ(p[offset + i], static_cast<float>(before[offset + i] * factor))
          << params.name(t) << "[" << i << "]";
  }
}

}  // namespace
}  // namespace moex::train
