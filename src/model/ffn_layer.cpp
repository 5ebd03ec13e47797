#include "model/ffn_layer.h"

#include <cmath>

#include "core/rng.h"
#include "moe/experts.h"

namespace moex::model {
namespace {

moe::FfnShape dense_shape(const ModelConfig& c) {
  return {c.hidden_size, c.ffn_size, c.activation, c.gelu_exact};
}

// The MoE weights in MoEWeights order, so that indices and tensors line up.
enum MoEWeight {
  kRouter,
  kSelectionBias,
  kW1,
  kW2,
  kResW1,
  kResW2,
  kResCoef,
  kSharedW1,
  kSharedW2,
  kSharedGate,
  kCount
};

Tensor* moe_weight(MoEWeights& w, int i) {
  Tensor* all[] = {&w.router,      &w.selection_bias, &w.w1,        &w.w2,        &w.residual_w1,
                   &w.residual_w2, &w.residual_coef,  &w.shared_w1, &w.shared_w2, &w.shared_gate};
  return all[i];
}

void fill_normal(float* p, int64_t n, float std, uint64_t seed, uint64_t offset) {
  Rng rng(seed, offset);
  for (int64_t i = 0; i < n; ++i) p[i] = std * rng.normal();
}

}  // namespace

FfnLayer::FfnLayer(const ModelConfig& config, const LayerSpec& spec)
    : config_(config), spec_(spec) {
  if (spec.moe) moe_ = std::make_unique<MoELayer>(spec.moe_config, DType::kF32);
}

void FfnLayer::declare(ParamBuffer& params, const std::string& prefix) {
  const int64_t d = config_.hidden_size;
  const bool swiglu = config_.activation == ExpertActivation::kSwiGLU;
  // Declares one MLP: SwiGLU gate/up back to back so they read as one [2F, d] matrix.
  auto declare_mlp = [&](const std::string& p, int64_t ffn, int* w1, int* w2) {
    *w1 = swiglu ? params.declare_contiguous({p + ".gate_proj.weight", p + ".up_proj.weight"},
                                             {Shape{ffn, d}, Shape{ffn, d}})
                 : params.declare(p + ".up_proj.weight", Shape{ffn, d});
    *w2 = params.declare(p + ".down_proj.weight", Shape{d, ffn});
  };
  if (!moe_) {
    declare_mlp(prefix, config_.ffn_size, &w1_idx_, &w2_idx_);
    return;
  }
  const MoEConfig& m = spec_.moe_config;
  const int64_t e = m.num_experts, f = m.ffn_size;
  moe_idx_.assign(kCount, -1);
  moe_idx_[kRouter] = params.declare(prefix + ".gate.weight", Shape{e, d});
  if (m.selection_bias)
    moe_idx_[kSelectionBias] = params.declare(prefix + ".gate.e_score_correction_bias", Shape{e});
  moe_idx_[kW1] = params.declare(prefix + (swiglu ? ".experts.gate_up_proj" : ".experts.up_proj"),
                                 Shape{e, m.first_proj_rows(f), d});
  moe_idx_[kW2] = params.declare(prefix + ".experts.down_proj", Shape{e, d, f});
  if (m.residual) {
    declare_mlp(prefix + ".residual_mlp", m.residual_ffn_size ? m.residual_ffn_size : f,
                &moe_idx_[kResW1], &moe_idx_[kResW2]);
    moe_idx_[kResCoef] = params.declare(prefix + ".residual_coef.weight", Shape{2, d});
  }
  if (m.shared_ffn_size > 0) {
    declare_mlp(prefix + ".shared_expert", m.shared_ffn_size, &moe_idx_[kSharedW1],
                &moe_idx_[kSharedW2]);
    if (m.shared_gate)
      moe_idx_[kSharedGate] = params.declare(prefix + ".shared_expert_gate.weight", Shape{1, d});
  }
}

void FfnLayer::bind_moe_views(const ParamBuffer& params) {
  MoEWeights& w = moe_->weights();
  const bool swiglu = config_.activation == ExpertActivation::kSwiGLU;
  for (int i = 0; i < kCount; ++i) {
    const int idx = moe_idx_[i];
    if (idx < 0) continue;
    Tensor t = params.tensor(idx);
    // gate_proj + up_proj of the residual and shared MLPs are one fused [2F, d] view
    if ((i == kResW1 || i == kSharedW1) && swiglu)
      t = params.span(idx, idx + 1, Shape{2 * t.dim(0), t.dim(1)});
    *moe_weight(w, i) = t;
  }
}

void FfnLayer::bind(const ParamBuffer& params, const ParamBuffer& grads) {
  grads_ = &grads;
  if (moe_) {
    bind_moe_views(params);
    return;
  }
  w1_ = bind_param(params, grads, w1_idx_);
  w2_ = bind_param(params, grads, w2_idx_);
}

void FfnLayer::init(uint64_t seed, float std, float out_std) {
  const int64_t d = config_.hidden_size;
  if (!moe_) {
    const moe::FfnShape s = dense_shape(config_);
    fill_normal(w1_.w, s.first_rows() * d, std, seed, 1);
    fill_normal(w2_.w, d * s.ffn, out_std, seed, 2);
    return;
  }
  MoEWeights& w = moe_->weights();
  for (int i = 0; i < kCount; ++i) {
    Tensor* t = moe_weight(w, i);
    if (!t->defined()) continue;
    float* p = t->data<float>();
    if (i == kSelectionBias) {
      std::fill(p, p + t->numel(), 0.0f);
    } else {
      const bool out_proj = i == kW2 || i == kResW2 || i == kSharedW2;
      fill_normal(p, t->numel(), out_proj ? out_std : std, seed, 10 + i);
    }
  }
}

void FfnLayer::forward(const float* x, int64_t n, float* y, bool save, const StepOptions& step) {
  const int64_t d = config_.hidden_size;
  if (!moe_) {
    const moe::FfnShape s = dense_shape(config_);
    std::vector<float> h(n * s.first_rows()), a(n * s.ffn);
    moe::ffn_forward<float>(s, x, n, w1_.w, w2_.w, h.data(), a.data(), y);
    if (save) {
      n_ = n;
      x_.assign(x, x + n * d);
      h_ = std::move(h);
      a_ = std::move(a);
    }
    return;
  }
  MoEForwardOptions options;
  options.training = step.training;
  options.seed = step.seed;
  options.offset = step.offset;
  options.loss_scale = step.loss_scale;
  if (hold_routing_) options.fixed_routing = &held_;
  // The layer reads its input again in backward: keep it alive here.
  x_.assign(x, x + n * d);
  const Tensor xt = Tensor::from_external(x_.data(), Shape{n, d}, DType::kF32);
  const MoEOutput& out = moe_->forward(xt, options);
  if (!hold_routing_) held_ = moe_->routing();
  std::copy(out.y.data<float>(), out.y.data<float>() + n * d, y);
  stats_ = out;
}

void FfnLayer::backward(const float* dy, float* dx) {
  const int64_t d = config_.hidden_size;
  if (!moe_) {
    const moe::FfnShape s = dense_shape(config_);
    std::vector<float> workspace(moe::ffn_workspace_elems(s, n_));
    moe::ffn_backward<float>(s, x_.data(), n_, w1_.w, w2_.w, h_.data(), a_.data(), dy,
                             workspace.data(), dx, 0.0f, w1_.g, w2_.g, 1.0f);
    return;
  }
  const int64_t n = moe_->routing().plan.num_tokens;
  const Tensor dyt = Tensor::from_external(const_cast<float*>(dy), Shape{n, d}, DType::kF32);
  const MoEGradients& g = moe_->backward(dyt);
  std::copy(g.dx.data<float>(), g.dx.data<float>() + n * d, dx);
  MoEWeights& gw = const_cast<MoEWeights&>(g.weights);
  for (int i = 0; i < kCount; ++i) {
    const int idx = moe_idx_[i];
    const Tensor* t = moe_weight(gw, i);
    if (idx < 0 || !t->defined()) continue;
    float* dst = static_cast<float*>(
        grads_->tensor(idx).raw_data());  // fused views start at the first entry
    const float* src = t->data<float>();
    for (int64_t j = 0; j < t->numel(); ++j) dst[j] += src[j];
  }
}

}  // namespace moex::model
