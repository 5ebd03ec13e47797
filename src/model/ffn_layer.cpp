#include "model/ffn_layer.h"

#include <cmath>

#include "ops/activation.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/profile.h"

namespace moex::model {
namespace {

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

ops::Activation activation_kind(const ModelConfig& c) {
  if (c.activation == ExpertActivation::kSwiGLU) return ops::Activation::kSwiGLU;
  return c.gelu_exact ? ops::Activation::kGeluExact : ops::Activation::kGeluTanh;
}

// This rank's part (tp) of one MLP's w1 [blocks * F/tp, d] (SwiGLU: 2 blocks, its gate rows then
// its up rows) and w2 [d, F/tp], with the numbers their elements have in the whole [blocks * F, d]
// and [d, F] matrices, whose first elements are draws first1 and first2 of streams offset1 and
// offset2. With tp inactive, the whole matrices.
void fill_mlp_part(const Tensor& w1, const Tensor& w2, int64_t f, int64_t d, int64_t blocks,
                   const TensorParallel& tp, float std, float out_std, uint64_t seed,
                   uint64_t offset1, int64_t first1, uint64_t offset2, int64_t first2) {
  const int64_t fl = tp.part(f);
  for (int64_t b = 0; b < blocks; ++b)
    fill_normal_part(w1.slice(b * fl, (b + 1) * fl), f, d, tp.active() ? 0 : -1, tp, std, seed,
                     offset1, first1 + b * f * d);
  fill_normal_part(w2, d, f, tp.active() ? 1 : -1, tp, out_std, seed, offset2, first2);
}

}  // namespace

FfnLayer::FfnLayer(const ModelConfig& config, const LayerSpec& spec,
                   dist::Communicator* expert_group, const TensorParallel& tp)
    : config_(config),
      spec_(spec),
      tp_(spec.moe ? TensorParallel{} : tp),
      expert_tp_(spec.moe && tp.slice_experts ? tp : TensorParallel{}) {
  if (!spec.moe) return;
  // Under expert tensor-slicing the layer computes this rank's F/tp of every expert's hidden
  // width; the residual and shared MLPs stay whole.
  MoEConfig local = spec.moe_config;
  if (expert_tp_.active()) {
    if (local.residual && local.residual_ffn_size == 0) local.residual_ffn_size = local.ffn_size;
    local.ffn_size = expert_tp_.part(local.ffn_size);
  }
  moe_ = std::make_unique<MoELayer>(local, DType::kF32, expert_group);
  if (expert_tp_.active()) moe_->slice_experts(tp.group, tp.device_group);
  // The tp ranks route the same tokens to the same experts: exchange each row once.
  if (tp.active() && tp.drop_duplicate_tokens)
    moe_->drop_duplicate_tokens(tp.group, tp.device_group);
}

std::vector<int> FfnLayer::expert_param_indices() const {
  if (!moe_) return {};
  return {moe_idx_[kW1], moe_idx_[kW2]};
}

std::vector<int> FfnLayer::rule_param_indices() const {
  if (!moe_ || moe_idx_[kSelectionBias] < 0) return {};
  return {moe_idx_[kSelectionBias]};
}

std::vector<int> FfnLayer::router_param_indices() const {
  if (!moe_) return {};
  return {moe_idx_[kRouter]};
}

void FfnLayer::declare(ParamBuffer& params, const std::string& prefix) {
  const int64_t d = config_.hidden_size;
  const bool swiglu = config_.activation == ExpertActivation::kSwiGLU;
  // Declares one MLP: SwiGLU gate/up back to back so they read as one [2F, d] matrix. Under tp
  // (the dense FFN only) this rank's rows of gate/up and columns of down.
  auto declare_mlp = [&](const std::string& p, int64_t ffn, int* w1, int* w2, bool split) {
    const int rows = split ? 0 : -1, cols = split ? 1 : -1;
    *w1 = swiglu ? params.declare_contiguous({p + ".gate_proj.weight", p + ".up_proj.weight"},
                                             {Shape{ffn, d}, Shape{ffn, d}}, rows)
                 : params.declare(p + ".up_proj.weight", Shape{ffn, d}, rows);
    *w2 = params.declare(p + ".down_proj.weight", Shape{d, ffn}, cols);
  };
  if (!moe_) {
    declare_mlp(prefix, tp_.part(config_.ffn_size), &w1_idx_, &w2_idx_, tp_.active());
    return;
  }
  const MoEConfig& m = spec_.moe_config;
  const int64_t e = m.num_experts, el = moe_->num_local_experts(), f = m.ffn_size,
                fl = expert_tp_.part(f);
  moe_idx_.assign(kCount, -1);
  moe_idx_[kRouter] = params.declare(prefix + ".gate.weight", Shape{e, d});
  if (m.selection_bias)
    moe_idx_[kSelectionBias] = params.declare(prefix + ".gate.e_score_correction_bias", Shape{e});
  // Sliced: this rank's rows of each expert's first projection (of its gate and of its up half
  // under SwiGLU) and columns of its second.
  const bool sliced = expert_tp_.active();
  moe_idx_[kW1] = params.declare(prefix + (swiglu ? ".experts.gate_up_proj" : ".experts.up_proj"),
                                 Shape{el, m.first_proj_rows(fl), d}, sliced ? 1 : -1,
                                 static_cast<int>(m.first_proj_rows(1)));
  moe_idx_[kW2] = params.declare(prefix + ".experts.down_proj", Shape{el, d, fl}, sliced ? 2 : -1);
  if (m.residual) {
    declare_mlp(prefix + ".residual_mlp", m.residual_ffn_size ? m.residual_ffn_size : f,
                &moe_idx_[kResW1], &moe_idx_[kResW2], false);
    moe_idx_[kResCoef] = params.declare(prefix + ".residual_coef.weight", Shape{2, d});
  }
  if (m.shared_ffn_size > 0) {
    declare_mlp(prefix + ".shared_expert", m.shared_ffn_size, &moe_idx_[kSharedW1],
                &moe_idx_[kSharedW2], false);
    if (m.shared_gate)
      moe_idx_[kSharedGate] = params.declare(prefix + ".shared_expert_gate.weight", Shape{1, d});
  }
}

// Entry idx of `buffer`; with SwiGLU, a first projection (gate_proj then up_proj, declared back
// to back) is one fused [2F, d] view.
Tensor FfnLayer::view_of(const ParamBuffer& buffer, int idx, bool first_proj) const {
  const Tensor& t = buffer.tensor(idx);  // undefined in an unallocated buffer
  if (!t.defined() || !first_proj || config_.activation != ExpertActivation::kSwiGLU) return t;
  return buffer.span(idx, idx + 1, Shape{2 * t.dim(0), t.dim(1)});
}

Param FfnLayer::param_of(const ParamViews& views, int idx, bool first_proj) const {
  const bool fused = first_proj && config_.activation == ExpertActivation::kSwiGLU;
  return {view_of(views.compute, idx, first_proj), view_of(views.grads, idx, first_proj), idx,
          fused ? 2 : 1, views.writes};
}

void FfnLayer::bind(const ParamViews& views) {
  if (moe_) {
    // The layer reads the master weights (f32, or a GPU model's bf16 master); the residual and
    // shared MLPs' first projections fused.
    MoEWeights& w = moe_->weights();
    moe_grads_.assign(kCount, Param());
    for (int i = 0; i < kCount; ++i) {
      if (moe_idx_[i] < 0) continue;
      const bool first_proj = i == kResW1 || i == kSharedW1;
      *moe_weight(w, i) = view_of(views.master, moe_idx_[i], first_proj);
      moe_grads_[i] = param_of(views, moe_idx_[i], first_proj);
    }
    // On a GPU the layer computes with the model's bf16 experts and adds into its gradients.
    const Tensor& w1 = views.compute.tensor(moe_idx_[kW1]);
    if (w1.device().is_cuda())
      moe_->bind_device_expert_buffers(w1.device(), w1, views.compute.tensor(moe_idx_[kW2]),
                                       views.grads.tensor(moe_idx_[kW1]),
                                       views.grads.tensor(moe_idx_[kW2]));
    return;
  }
  w1_ = param_of(views, w1_idx_, true);
  w2_ = bind_param(views, w2_idx_);
}

void FfnLayer::init(uint64_t seed, float std, float out_std) {
  const int64_t d = config_.hidden_size;
  if (!moe_) {
    // Under tp each rank draws its part's numbers of the whole [F1, d] and [d, F] matrices.
    const int64_t blocks = config_.activation == ExpertActivation::kSwiGLU ? 2 : 1;
    fill_mlp_part(w1_.w, w2_.w, config_.ffn_size, d, blocks, tp_, std, out_std, seed, 1, 0, 2, 0);
    return;
  }
  MoEWeights& w = moe_->weights();
  // Each local expert draws its numbers of the whole [E, F1, d] and [E, d, F] tensors (its slice
  // of them under expert slicing).
  const MoEConfig& m = spec_.moe_config;
  const int64_t f = m.ffn_size, fl = expert_tp_.part(f), blocks = m.first_proj_rows(1);
  for (int64_t e = 0; e < moe_->num_local_experts(); ++e) {
    const int64_t expert = moe_->first_local_expert() + e;
    fill_mlp_part(w.w1.slice(e, e + 1).view(Shape{blocks * fl, d}),
                  w.w2.slice(e, e + 1).view(Shape{d, fl}), f, d, blocks, expert_tp_, std, out_std,
                  seed, 10 + kW1, expert * blocks * f * d, 10 + kW2, expert * d * f);
  }
  for (int i = 0; i < kCount; ++i) {
    Tensor* t = moe_weight(w, i);
    if (!t->defined() || i == kW1 || i == kW2) continue;
    float* p = t->data<float>();
    if (i == kSelectionBias) {
      std::fill(p, p + t->numel(), 0.0f);
    } else {
      const bool out_proj = i == kResW2 || i == kSharedW2;
      fill_normal(p, t->numel(), out_proj ? out_std : std, seed, 10 + i, 0);
    }
  }
}

void FfnLayer::forward(const Tensor& x, const Tensor& y, Arena& arena, bool save,
                       const StepOptions& step) {
  const int64_t n = x.dim(0);
  if (!moe_) {
    const int64_t f = w2_.w.dim(1), f1 = w1_.w.dim(0);
    const Tensor h = arena.alloc(Shape{n, f1}, x.dtype());
    ops::linear(x, w1_.w, Tensor(), h);
    {
      ArenaScope scope(arena);  // a lives until the down projection; backward recomputes it
      const Tensor a = arena.alloc(Shape{n, f}, x.dtype());
      ops::activation(activation_kind(config_), h, a);
      ops::linear(a, w2_.w, Tensor(), y);
    }
    tp_.all_reduce(y);  // each rank's columns add their part
    if (save) {
      x_ = x;
      h_ = h;
    }
    return;
  }
  MoEForwardOptions options = moe_options(save, step);
  options.out = y;  // the GPU layer writes y itself
  // Recompute (activation checkpointing) must route as the first pass did. The CPU layer is given
  // the first pass's routing. The GPU layer recomputes it: the same input bits, seed and stream
  // offset through deterministic kernels (router GEMM, fixed-order gating) give the same experts
  // and slots (docs/gpu-model.md §Activation checkpointing).
  const bool cpu = x.device().is_cpu();
  if (hold_routing_ && cpu) options.fixed_routing = &held_;
  const ops::ProfileScope profile("moe_forward", x.device());
  const MoEOutput& out = moe_->forward(x, options);
  if (!hold_routing_ && cpu) held_ = moe_->routing();
  if (out.y.raw_data() != y.raw_data()) ops::copy(out.y, y);
  stats_ = &out;
}

MoEForwardOptions FfnLayer::moe_options(bool save, const StepOptions& step) const {
  MoEForwardOptions options;
  options.training = step.training;
  options.seed = step.seed;
  options.offset = step.offset;
  options.loss_scale = step.loss_scale;
  options.drop_tokens = step.drop_tokens;
  options.keep_for_backward = save;
  // A recompute's backward follows at once: its expert rows can live in the shared scratch.
  options.keep_in_scratch = save && hold_routing_;
  if (save && !hold_routing_) options.lent_rows = step.lent_rows;
  options.defer_stats = true;
  options.want_stats = step.stats;
  options.keep_exchange = step.cac && !hold_routing_;
  options.reuse_exchange = step.cac && hold_routing_;
  return options;
}

size_t FfnLayer::kept_bytes_bound(const Device& device, int64_t n, const StepOptions& step) {
  return moe_ ? moe_->device_kept_bytes_bound(device, n, moe_options(true, step)) : 0;
}

const MoEStats& FfnLayer::stats() {
  static const MoEStats kNone;  // a dense FFN or an MoE layer before its first forward
  if (!moe_ || stats_ == nullptr) return kNone;
  moe_->finish_stats();
  return *stats_;
}

void FfnLayer::backward(const Tensor& dy, const Tensor& dx, Arena& arena) {
  if (!moe_) {
    ArenaScope scope(arena);
    const Tensor da = arena.alloc(Shape{h_.dim(0), w2_.w.dim(1)}, dy.dtype());
    const Tensor dh = arena.alloc(h_.shape(), dy.dtype());
    ops::linear_backward(dy, Tensor(), w2_.w, da, false, Tensor(), false, Tensor());  // da = dy w2
    // dh, and the forward's a again over da (the same bits), which dw2 = dy^T a then reads.
    ops::activation_backward(activation_kind(config_), h_, da, dh, da);
    ops::linear_backward(dy, da, w2_.w, Tensor(), false, w2_.g, w2_.grad_accumulates(), Tensor());
    ops::linear_backward(dh, x_, w1_.w, dx, false, w1_.g, w1_.grad_accumulates(), Tensor());
    tp_.all_reduce(dx);
    return;
  }
  const ops::ProfileScope profile("moe_backward", dy.device());
  // A GPU layer writes its experts' gradients into the model's buffer itself (bound buffers).
  const bool bound = moe_->has_device_expert_buffers();
  const bool add_w1 = bound && moe_grads_[kW1].grad_accumulates();
  const bool add_w2 = bound && moe_grads_[kW2].grad_accumulates();
  MOEX_CHECK(add_w1 == add_w2, "FfnLayer: expert gradients w1 and w2 written apart");
  const MoEGradients& g = moe_->backward(dy, add_w1, dx);
  if (g.dx.raw_data() != dx.raw_data()) ops::copy(g.dx, dx);
  const MoEWeights& gw = g.weights;
  for (int i = 0; i < kCount; ++i) {
    const Tensor* t = moe_weight(const_cast<MoEWeights&>(gw), i);
    if (moe_idx_[i] < 0 || !t->defined()) continue;
    const Param& p = moe_grads_[i];
    const Tensor grad = t->view(p.g.shape());
    if (p.grad_accumulates())
      ops::add_into(grad, p.g);
    else
      ops::copy(grad, p.g);
  }
}

}  // namespace moex::model
