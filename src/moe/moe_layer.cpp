#include "moe/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/rng.h"
#include "cpu/gemm.h"
#include "dist/communicator.h"
#include "dist/device_group.h"
#include "moe/expert_exchange.h"
#include "moe/experts.h"
#include "moe/moe_layer_dispatch.h"
#include "moe/router.h"

namespace moex {

struct MoELayer::Impl {
  virtual ~Impl() = default;
  virtual const MoEOutput& forward(const Tensor& x, const MoEForwardOptions& options) = 0;
  virtual const MoEGradients& backward(const Tensor& dy) = 0;
  virtual moe::ExchangeStats exchange_stats() const { return {}; }
  virtual void drop_duplicates(dist::Communicator* tp_group) = 0;

  MoEConfig config;
  DType dtype = DType::kF32;
  MoEWeights weights;
  MoERouting routing;
  dist::Communicator* expert_group = nullptr;     // set when ep > 1 (experts spread over ranks)
  dist::Communicator* duplicate_group = nullptr;  // drop_duplicate_tokens' tp group (ranks > 1)
  bool bound_expert_buffers = false;              // bind_device_expert_buffers was called
  dist::Communicator* slice_group = nullptr;      // expert tensor-slicing over these ranks
  MoEDeviceGroups device_groups;                  // the GPU twins of the three groups above
  int64_t num_local_experts = 0, first_local_expert = 0;
  std::unique_ptr<MoEDeviceLayer> device;  // GPU path (moe_layer_dispatch.h), made on first use
};

namespace {

using moe::FfnShape;

Tensor zeros_if(bool used, const Shape& shape, DType dtype) {
  return used ? Tensor::zeros(shape, dtype) : Tensor();
}

MoEWeights make_weights(const MoEConfig& c, int64_t num_local_experts, DType dtype) {
  const int64_t d = c.hidden_size, e = c.num_experts, el = num_local_experts, f = c.ffn_size;
  const int64_t fr = c.residual_ffn_size > 0 ? c.residual_ffn_size : f, fs = c.shared_ffn_size;
  MoEWeights w;
  w.router = Tensor::zeros(Shape{e, d}, dtype);
  w.selection_bias = zeros_if(c.selection_bias, Shape{e}, dtype);
  w.w1 = Tensor::zeros(Shape{el, c.first_proj_rows(f), d}, dtype);
  w.w2 = Tensor::zeros(Shape{el, d, f}, dtype);
  w.residual_w1 = zeros_if(c.residual, Shape{c.first_proj_rows(fr), d}, dtype);
  w.residual_w2 = zeros_if(c.residual, Shape{d, fr}, dtype);
  w.residual_coef = zeros_if(c.residual, Shape{2, d}, dtype);
  w.shared_w1 = zeros_if(fs > 0, Shape{c.first_proj_rows(fs > 0 ? fs : 1), d}, dtype);
  w.shared_w2 = zeros_if(fs > 0, Shape{d, fs}, dtype);
  w.shared_gate = zeros_if(c.shared_gate, Shape{1, d}, dtype);
  return w;
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Buffers of one forward kept for backward; vectors grow once and are reused across steps.
template <typename T>
struct FfnSaved {
  std::vector<T> h, out;  // [n,F1] [n,d]
  void resize(const FfnShape& s, int64_t n) {
    h.resize(n * s.first_rows());
    out.resize(n * s.d);
  }
};

// The activations a [n,F] of an MLP's forward, dead after its down projection (backward recomputes
// them from h): one buffer shared by every layer the thread runs, grown to the largest use.
template <typename T>
T* activation_scratch(const FfnShape& s, int64_t n) {
  thread_local std::vector<T> a;
  if (a.size() < static_cast<size_t>(n * s.ffn)) a.resize(static_cast<size_t>(n * s.ffn));
  return a.data();
}

template <typename T>
class LayerImpl final : public MoELayer::Impl {
 public:
  const MoEOutput& forward(const Tensor& x, const MoEForwardOptions& options) override;
  const MoEGradients& backward(const Tensor& dy) override;

 private:
  FfnShape expert_shape() const {
    return {config.hidden_size, config.ffn_size, config.activation, config.gelu_exact};
  }
  FfnShape residual_shape() const {
    return {config.hidden_size,
            config.residual_ffn_size > 0 ? config.residual_ffn_size : config.ffn_size,
            config.activation, config.gelu_exact};
  }
  FfnShape shared_shape() const {
    return {config.hidden_size, config.shared_ffn_size, config.activation, config.gelu_exact};
  }

  MoEOutput out_;
  MoEGradients grads_;
  Tensor x_;  // [T,d] the forward input (shared storage, not copied)
  int64_t num_tokens_ = 0;
  bool jittered_ = false;
  std::vector<T> u_, xj_;      // [T,d] jitter factors and the router's input
  std::vector<T> z_, s_;       // [T,E] logits and scores
  std::vector<T> gates_;       // [T,k]
  std::vector<T> buf_, dbuf_;  // [R,d]
  FfnSaved<T> experts_;        // over the expert rows (R, or R_local under ep)
  // Expert parallelism: the rows this rank's experts compute, and their outputs in the plan's
  // layout (what the combine reads).
  moe::ExpertExchange exchange_;
  moe::ExchangeStats exchange_stats() const override {
    moe::ExchangeStats s = exchange_.stats();
    s.slice_reduce_bytes = slice_reduce_bytes_;
    return s;
  }
  int64_t slice_reduce_bytes_ = 0;  // expert rows all-reduced over slice_group so far
  // Sums this rank's slice's part of n values over slice_group (expert tensor-slicing).
  void reduce_slices(T* data, int64_t n) {
    slice_group->all_reduce_sum(data, n);
    slice_reduce_bytes_ += n * static_cast<int64_t>(sizeof(T));
  }
  void drop_duplicates(dist::Communicator* tp_group) override {
    exchange_.drop_duplicates(tp_group);
  }
  std::vector<T> local_buf_, local_grad_;  // [R_local,d]
  std::vector<T> rows_out_;                // [R,d]
  std::vector<T> dw_tmp_;                  // [El*F1*d + El*d*F] one source block's dw1, dw2
  // CAC: local_buf_, rows_out_ and exchange_'s plans hold a checkpointed first pass's all-to-all
  // results for its recompute. They are this layer's own buffers, which nothing else writes
  // before its next forward, so keeping them copies nothing.
  bool exchange_kept_ = false;
  // The expert computation runs once per source rank of the rows (ExpertExchange::source_plan).
  int num_sources() const { return expert_group ? expert_group->size() : 1; }
  const moe::DispatchPlan& source_plan(int q) const {
    return expert_group ? exchange_.source_plan(q) : routing.plan;
  }
  std::vector<T> y_moe_;           // [T,d] (residual only)
  FfnSaved<T> residual_, shared_;  // over T rows
  std::vector<T> coef_;            // [T,2] softmax(x Wc^T)
  std::vector<T> shared_gate_;     // [T] sigmoid(x ws^T)
  std::vector<T> workspace_;
  std::vector<T> dout_, dgates_, ds_, dz_, dtmp_;
  double loss_scale_ = 1.0;  // MoEForwardOptions::loss_scale of the last forward
};

template <typename T>
const MoEOutput& LayerImpl<T>::forward(const Tensor& x, const MoEForwardOptions& options) {
  const MoEConfig& c = config;
  const int64_t d = c.hidden_size, num_e = c.num_experts;
  const int k = c.top_k;
  MOEX_CHECK(x.defined() && x.ndim() == 2, "MoELayer::forward: x must be a [T, d] tensor");
  check_tensor(x, "MoELayer::forward x", dtype, Shape{x.dim(0), d});
  MOEX_CHECK(x.device().is_cpu(), "MoELayer::forward: x must be on the CPU here, got ",
             x.device().str());
  const int64_t num_t = x.dim(0);
  num_tokens_ = num_t;
  loss_scale_ = options.loss_scale;
  x_ = x;
  const T* xp = x.data<T>();

  // 1. Router logits on the (optionally jittered) input; the experts see the unjittered x.
  jittered_ = options.training && c.jitter_eps > 0;
  const T* router_in = xp;
  if (jittered_) {
    u_.resize(num_t * d);
    xj_.resize(num_t * d);
    moe::router_jitter<T>(xp, num_t, d, c.jitter_eps, options.seed, options.offset, u_.data(),
                          xj_.data());
    router_in = xj_.data();
  }
  z_.resize(num_t * num_e);
  s_.resize(num_t * num_e);
  moe::router_logits<T>(router_in, ptr<T>(weights.router), num_t, d, num_e, z_.data());
  moe::router_scores<T>(z_.data(), num_t, num_e, c.score_func, s_.data());

  // CAC recompute: the kept exchange must be the one of this routing (the first pass's).
  const bool reuse = expert_group != nullptr && options.reuse_exchange;
  if (reuse) {
    MOEX_CHECK(exchange_kept_ && options.fixed_routing != nullptr &&
                   options.fixed_routing->topk_idx == routing.topk_idx &&
                   options.fixed_routing->plan.counts == routing.plan.counts,
               "MoELayer::forward: reuse_exchange needs the previous forward to be a first pass "
               "with keep_exchange and this forward to hold its routing (fixed_routing)");
  }
  exchange_kept_ = false;

  // 2-3. Selection and the dispatch plan (or the ones held fixed).
  if (options.fixed_routing != nullptr) {
    const MoERouting& fixed = *options.fixed_routing;
    MOEX_CHECK(static_cast<int64_t>(fixed.topk_idx.size()) == num_t * k &&
                   fixed.plan.num_tokens == num_t && fixed.plan.top_k == k &&
                   fixed.plan.num_experts == num_e,
               "MoELayer::forward: fixed_routing was made for another T/k/E");
    if (&fixed != &routing) routing = fixed;
  } else {
    routing.topk_idx.resize(num_t * k);
    moe::RouterSelectParams sp;
    sp.top_k = k;
    sp.score_func = c.score_func;
    sp.rsample = c.rsample && options.training;
    sp.gumbel_second_expert = c.gumbel_second_expert && options.training;
    sp.seed = options.seed;
    sp.offset = options.offset;
    moe::router_select<T>(z_.data(), s_.data(), ptr<T>(weights.selection_bias), num_t, num_e, sp,
                          routing.topk_idx.data());
    moe::DispatchParams dp;
    dp.dropless = c.dropless;
    dp.capacity = c.dropless            ? 0
                  : options.drop_tokens ? moe_capacity(num_t, c, options.training)
                                        : std::max<int64_t>(num_t, 1);
    dp.policy = c.drop_policy;
    dp.seed = options.seed;
    dp.offset = options.offset;
    std::vector<T> route_score;
    if (!c.dropless && c.drop_policy == DropPolicy::kProbs) {
      route_score.resize(num_t * k);
      for (int64_t r = 0; r < num_t * k; ++r)
        route_score[r] = s_[(r / k) * num_e + routing.topk_idx[r]];
    }
    moe::build_dispatch_plan<T>(routing.topk_idx.data(),
                                route_score.empty() ? nullptr : route_score.data(), num_t, num_e, k,
                                dp, &routing.plan);
  }
  const moe::DispatchPlan& plan = routing.plan;
  gates_.resize(num_t * k);
  moe::router_gates<T>(s_.data(), routing.topk_idx.data(), plan.slot.data(), num_t, num_e, k,
                       {c.renormalize, c.renormalize_after_drop}, gates_.data());

  // 4. Aux losses on the pre-drop selection.
  out_.aux_loss = moe::router_aux_loss<T>(s_.data(), routing.topk_idx.data(), num_t, num_e, k,
                                          c.aux_loss_type, c.score_func, 0.0, nullptr);
  out_.z_loss = moe::router_z_loss<T>(z_.data(), num_t, num_e, 0.0, nullptr);
  out_.weighted_loss = c.aux_loss_coef * out_.aux_loss + c.z_loss_coef * out_.z_loss;
  out_.load = plan.load;
  out_.counts = plan.counts;
  out_.gate_mass.assign(static_cast<size_t>(num_e), 0.0);
  {
    // Dropped routes have a zero gate: recompute the weights with every route kept.
    std::vector<T> all_kept;
    const T* g = gates_.data();
    if (plan.num_dropped > 0) {
      all_kept.resize(num_t * k);
      moe::router_gates<T>(s_.data(), routing.topk_idx.data(), nullptr, num_t, num_e, k,
                           {c.renormalize, false}, all_kept.data());
      g = all_kept.data();
    }
    for (int64_t r = 0; r < num_t * k; ++r)
      out_.gate_mass[static_cast<size_t>(routing.topk_idx[r])] += static_cast<double>(g[r]);
  }
  out_.num_dropped = plan.num_dropped;
  out_.capacity = plan.capacity;

  // 6, 7, 8, 9. Permute, send rows to their experts' ranks, experts, back, combine.
  const FfnShape es = expert_shape();
  const int64_t rows = plan.num_rows();
  buf_.resize(rows * d);
  moe::moe_permute<T>(xp, plan, d, buf_.data());
  const T* expert_in = buf_.data();
  if (expert_group != nullptr) {
    if (!reuse) {
      exchange_.prepare(plan, *expert_group);
      local_buf_.resize(exchange_.local_plan().num_rows() * d);
      exchange_.to_owners(buf_.data(), d, local_buf_.data());
    }
    expert_in = local_buf_.data();
  }
  const moe::DispatchPlan& eplan = expert_group ? exchange_.local_plan() : plan;
  // A CAC recompute's expert rows are the first pass's (the kept exchange), and so are their
  // activations: that pass was this layer's last forward, so experts_ still holds them (the
  // reuse check above), sliced experts' sums included. Nothing is computed again.
  if (!reuse) {
    experts_.resize(es, eplan.num_rows());
    for (int q = 0; q < num_sources(); ++q)
      moe::experts_forward<T>(es, source_plan(q), expert_in, ptr<T>(weights.w1), ptr<T>(weights.w2),
                              experts_.h.data(), activation_scratch<T>(es, eplan.num_rows()),
                              experts_.out.data());
    // Sliced experts: each rank's out rows are its slice's part of the sum over F.
    if (slice_group != nullptr) reduce_slices(experts_.out.data(), eplan.num_rows() * d);
  }
  const T* expert_out = experts_.out.data();
  if (expert_group != nullptr) {
    if (reuse) {
      exchange_.reuse_forward<T>(d);  // the owners' outputs are the first pass's, bit for bit
    } else {
      rows_out_.resize(rows * d);
      exchange_.from_owners(experts_.out.data(), d, rows_out_.data());
    }
    expert_out = rows_out_.data();
  }
  exchange_kept_ = expert_group != nullptr && options.keep_exchange;
  if (!out_.y.defined() || out_.y.dim(0) != num_t) out_.y = Tensor::empty(Shape{num_t, d}, dtype);
  T* y = out_.y.data<T>();

  // 10. PR-MoE residual: y = moe(x) c0 + mlp(x) c1, c = softmax(x Wc^T).
  if (c.residual) {
    y_moe_.resize(num_t * d);
    moe::moe_combine<T>(expert_out, plan, gates_.data(), d, y_moe_.data());
    const FfnShape rs = residual_shape();
    residual_.resize(rs, num_t);
    moe::ffn_forward<T>(rs, xp, num_t, ptr<T>(weights.residual_w1), ptr<T>(weights.residual_w2),
                        residual_.h.data(), activation_scratch<T>(rs, num_t), residual_.out.data());
    coef_.resize(num_t * 2);
    cpu::gemm<T>(false, true, num_t, 2, d, T(1), xp, ptr<T>(weights.residual_coef), T(0),
                 coef_.data());
    for (int64_t t = 0; t < num_t; ++t) {
      T* ct = coef_.data() + 2 * t;
      const T m = std::max(ct[0], ct[1]);
      const T e0 = std::exp(ct[0] - m), e1 = std::exp(ct[1] - m);
      ct[0] = e0 / (e0 + e1);
      ct[1] = e1 / (e0 + e1);
      for (int64_t i = 0; i < d; ++i)
        y[t * d + i] = y_moe_[t * d + i] * ct[0] + residual_.out[t * d + i] * ct[1];
    }
  } else {
    moe::moe_combine<T>(expert_out, plan, gates_.data(), d, y);
  }

  // Shared expert: y += [sigmoid(x ws^T)] * shared_mlp(x).
  if (c.shared_ffn_size > 0) {
    const FfnShape ss = shared_shape();
    shared_.resize(ss, num_t);
    moe::ffn_forward<T>(ss, xp, num_t, ptr<T>(weights.shared_w1), ptr<T>(weights.shared_w2),
                        shared_.h.data(), activation_scratch<T>(ss, num_t), shared_.out.data());
    shared_gate_.assign(num_t, T(1));
    if (c.shared_gate) {
      cpu::gemm<T>(false, true, num_t, 1, d, T(1), xp, ptr<T>(weights.shared_gate), T(0),
                   shared_gate_.data());
      for (auto& g : shared_gate_) g = T(1) / (T(1) + std::exp(-g));
    }
    for (int64_t t = 0; t < num_t; ++t) {
      for (int64_t i = 0; i < d; ++i) y[t * d + i] += shared_gate_[t] * shared_.out[t * d + i];
    }
  }
  return out_;
}

template <typename T>
const MoEGradients& LayerImpl<T>::backward(const Tensor& dy_tensor) {
  const MoEConfig& c = config;
  const int64_t d = c.hidden_size, num_e = c.num_experts, num_t = num_tokens_;
  const int k = c.top_k;
  MOEX_CHECK(x_.defined(), "MoELayer::backward called before forward");
  check_tensor(dy_tensor, "MoELayer::backward dy", dtype, Shape{num_t, d});
  const T* dy = dy_tensor.data<T>();
  const T* xp = x_.data<T>();
  const moe::DispatchPlan& plan = routing.plan;

  if (!grads_.dx.defined() || grads_.dx.dim(0) != num_t)
    grads_.dx = Tensor::empty(Shape{num_t, d}, dtype);
  if (!grads_.weights.router.defined()) {
    grads_.weights = make_weights(c, num_local_experts, dtype);
    grads_.weights.selection_bias = Tensor();
  }
  MoEWeights& g = grads_.weights;
  T* dx = grads_.dx.data<T>();
  std::fill(dx, dx + num_t * d, T(0));

  const FfnShape es = expert_shape();
  const moe::DispatchPlan& eplan = expert_group ? exchange_.local_plan() : plan;
  int64_t ws = moe::experts_workspace_elems(es, eplan);
  if (c.residual) ws = std::max(ws, moe::ffn_workspace_elems(residual_shape(), num_t));
  if (c.shared_ffn_size > 0) ws = std::max(ws, moe::ffn_workspace_elems(shared_shape(), num_t));
  workspace_.resize(ws);

  // Shared expert.
  if (c.shared_ffn_size > 0) {
    dtmp_.resize(num_t * d);
    T* dgate_logit = nullptr;
    std::vector<T> dgl;
    if (c.shared_gate) dgl.resize(num_t);
    for (int64_t t = 0; t < num_t; ++t) {
      T dot = 0;
      for (int64_t i = 0; i < d; ++i) {
        dtmp_[t * d + i] = dy[t * d + i] * shared_gate_[t];
        dot += dy[t * d + i] * shared_.out[t * d + i];
      }
      if (c.shared_gate) dgl[t] = dot * shared_gate_[t] * (T(1) - shared_gate_[t]);
    }
    if (c.shared_gate) {
      dgate_logit = dgl.data();
      cpu::gemm<T>(true, false, 1, d, num_t, T(1), dgate_logit, xp, T(0), ptr<T>(g.shared_gate));
      cpu::gemm<T>(false, false, num_t, d, 1, T(1), dgate_logit, ptr<T>(weights.shared_gate), T(1),
                   dx);
    }
    moe::ffn_backward<T>(shared_shape(), xp, num_t, ptr<T>(weights.shared_w1),
                         ptr<T>(weights.shared_w2), shared_.h.data(), dtmp_.data(),
                         workspace_.data(), dx, T(1), ptr<T>(g.shared_w1), ptr<T>(g.shared_w2),
                         T(0));
  }

  // Residual mix: dy_moe = dy c0, d(mlp) = dy c1, dc = (<dy, y_moe>, <dy, mlp>) -> softmax
  // backward.
  const T* dy_moe = dy;
  if (c.residual) {
    dtmp_.resize(num_t * d);
    std::vector<T> dy_m(num_t * d), dcl(num_t * 2);
    for (int64_t t = 0; t < num_t; ++t) {
      const T* ct = coef_.data() + 2 * t;
      T dc0 = 0, dc1 = 0;
      for (int64_t i = 0; i < d; ++i) {
        const int64_t at = t * d + i;
        dy_m[at] = dy[at] * ct[0];
        dtmp_[at] = dy[at] * ct[1];
        dc0 += dy[at] * y_moe_[at];
        dc1 += dy[at] * residual_.out[at];
      }
      const T dot = dc0 * ct[0] + dc1 * ct[1];
      dcl[2 * t] = ct[0] * (dc0 - dot);
      dcl[2 * t + 1] = ct[1] * (dc1 - dot);
    }
    cpu::gemm<T>(true, false, 2, d, num_t, T(1), dcl.data(), xp, T(0), ptr<T>(g.residual_coef));
    cpu::gemm<T>(false, false, num_t, d, 2, T(1), dcl.data(), ptr<T>(weights.residual_coef), T(1),
                 dx);
    moe::ffn_backward<T>(residual_shape(), xp, num_t, ptr<T>(weights.residual_w1),
                         ptr<T>(weights.residual_w2), residual_.h.data(), dtmp_.data(),
                         workspace_.data(), dx, T(1), ptr<T>(g.residual_w1), ptr<T>(g.residual_w2),
                         T(0));
    y_moe_.swap(dy_m);  // y_moe is not needed any more; reuse its storage for dy_moe
    dy_moe = y_moe_.data();
  }

  // Combine -> gate and expert-output gradients -> (to the experts' ranks) experts -> (back)
  // -> scatter-add into dx.
  const int64_t rows = plan.num_rows();
  dout_.resize(rows * d);
  dbuf_.resize(rows * d);
  dgates_.resize(num_t * k);
  moe::moe_combine_backward<T>(dy_moe, expert_group ? rows_out_.data() : experts_.out.data(), plan,
                               gates_.data(), d, dout_.data(), dgates_.data());
  const T* expert_in = buf_.data();
  const T* expert_dout = dout_.data();
  T* expert_din = dbuf_.data();
  if (expert_group != nullptr) {
    local_grad_.resize(2 * eplan.num_rows() * d);
    exchange_.to_owners(dout_.data(), d, local_grad_.data());
    expert_in = local_buf_.data();
    expert_dout = local_grad_.data();
    expert_din = local_grad_.data() + eplan.num_rows() * d;
  }
  // Block by block, the weight gradients summed in source order (the single process's order).
  for (int q = 0; q < num_sources(); ++q) {
    T* dw1 = ptr<T>(g.w1);
    T* dw2 = ptr<T>(g.w2);
    if (q > 0) {
      dw_tmp_.resize(g.w1.numel() + g.w2.numel());
      dw1 = dw_tmp_.data();
      dw2 = dw_tmp_.data() + g.w1.numel();
    }
    moe::experts_backward<T>(es, source_plan(q), expert_in, ptr<T>(weights.w1), ptr<T>(weights.w2),
                             experts_.h.data(), expert_dout, workspace_.data(), expert_din, dw1,
                             dw2);
    if (q == 0) continue;
    for (int64_t i = 0; i < g.w1.numel(); ++i) ptr<T>(g.w1)[i] += dw1[i];
    for (int64_t i = 0; i < g.w2.numel(); ++i) ptr<T>(g.w2)[i] += dw2[i];
  }
  if (slice_group != nullptr) reduce_slices(expert_din, eplan.num_rows() * d);
  if (expert_group != nullptr) exchange_.from_owners(expert_din, d, dbuf_.data());
  moe::moe_permute_backward<T>(dbuf_.data(), plan, d, dx);

  // Router: gates (renormalization) and aux loss -> scores -> logits (+ z-loss) -> Wg and x.
  ds_.assign(num_t * num_e, T(0));
  dz_.assign(num_t * num_e, T(0));
  moe::router_gates_backward<T>(s_.data(), routing.topk_idx.data(), plan.slot.data(),
                                dgates_.data(), num_t, num_e, k,
                                {c.renormalize, c.renormalize_after_drop}, ds_.data());
  if (c.aux_loss_coef != 0) {
    moe::router_aux_loss<T>(s_.data(), routing.topk_idx.data(), num_t, num_e, k, c.aux_loss_type,
                            c.score_func, c.aux_loss_coef * loss_scale_, ds_.data());
  }
  moe::router_scores_backward<T>(s_.data(), ds_.data(), num_t, num_e, c.score_func, dz_.data());
  if (c.z_loss_coef != 0)
    moe::router_z_loss<T>(z_.data(), num_t, num_e, c.z_loss_coef * loss_scale_, dz_.data());
  moe::router_logits_backward<T>(dz_.data(), jittered_ ? xj_.data() : xp, ptr<T>(weights.router),
                                 jittered_ ? u_.data() : nullptr, num_t, d, num_e, ptr<T>(g.router),
                                 dx);
  return grads_;
}

// Element i of t takes draw first + i of the stream: a shard of experts gets the same numbers as
// those experts have in the whole tensor.
void fill_uniform(const Tensor& t, uint64_t seed, uint64_t stream, double bound,
                  int64_t first = 0) {
  if (!t.defined()) return;
  const int64_t n = t.numel();
  // Each element is its own counter's draw, so the threads' chunks give the serial numbers (a
  // model's experts are billions of them).
  auto fill = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
#pragma omp parallel for schedule(static) if (n >= (int64_t{1} << 16))
    for (int64_t i = 0; i < n; ++i)
      p[i] = static_cast<T>(
          bound * (2.0 * philox_uniform(seed, stream, static_cast<uint64_t>(first + i)) - 1.0));
  };
  if (t.dtype() == DType::kF64)
    fill(t.data<double>());
  else
    fill(t.data<float>());
  t.mark_written();
}

}  // namespace

MoELayer::MoELayer(const MoEConfig& config, DType dtype, dist::Communicator* expert_group) {
  config.validate();
  const int ep = expert_group ? expert_group->size() : 1;
  MOEX_CHECK(config.num_experts % ep == 0, "MoELayer: ", config.num_experts,
             " experts cannot be split over ", ep, " expert-parallel ranks");
  MOEX_CHECK(dtype == DType::kF32 || dtype == DType::kF64,
             "MoELayer: dtype must be f32 or f64 on the CPU, got ", dtype_name(dtype));
  if (dtype == DType::kF64) {
    impl_ = std::make_unique<LayerImpl<double>>();
  } else {
    impl_ = std::make_unique<LayerImpl<float>>();
  }
  impl_->config = config;
  impl_->dtype = dtype;
  impl_->num_local_experts = config.num_experts / ep;
  impl_->first_local_expert = ep > 1 ? expert_group->rank() * impl_->num_local_experts : 0;
  if (ep > 1) impl_->expert_group = expert_group;
  impl_->weights = make_weights(config, impl_->num_local_experts, dtype);
}

MoELayer::~MoELayer() = default;

const MoEConfig& MoELayer::config() const {
  return impl_->config;
}
DType MoELayer::dtype() const {
  return impl_->dtype;
}
MoEWeights& MoELayer::weights() {
  return impl_->weights;
}
const MoERouting& MoELayer::routing() const {
  return impl_->routing;
}
namespace {
// A GPU twin must hold its CPU group's ranks (null twins are always fine).
void check_same_ranks(dist::DeviceGroup* gpu, dist::Communicator* cpu, const char* call,
                      const char* group) {
  MOEX_CHECK(gpu == nullptr ||
                 (cpu != nullptr && gpu->size() == cpu->size() && gpu->rank() == cpu->rank()),
             "MoELayer::", call, ": the GPU group must hold the ", group, "'s ranks");
}
}  // namespace

void MoELayer::drop_duplicate_tokens(dist::Communicator* tp_group,
                                     dist::DeviceGroup* device_group) {
  MOEX_CHECK(tp_group == nullptr || impl_->expert_group != nullptr,
             "MoELayer: Duplicate Token Dropping needs an expert group (ep > 1)");
  impl_->drop_duplicates(tp_group);
  impl_->duplicate_group = tp_group != nullptr && tp_group->size() > 1 ? tp_group : nullptr;
  check_same_ranks(device_group, impl_->duplicate_group, "drop_duplicate_tokens", "tp group");
  impl_->device_groups.duplicate = device_group;
  if (impl_->device) impl_->device->set_groups(impl_->device_groups);
}

void MoELayer::slice_experts(dist::Communicator* tp_group, dist::DeviceGroup* device_group) {
  impl_->slice_group = tp_group != nullptr && tp_group->size() > 1 ? tp_group : nullptr;
  check_same_ranks(device_group, impl_->slice_group, "slice_experts", "tp group");
  impl_->device_groups.slice = device_group;
  if (impl_->device) impl_->device->set_groups(impl_->device_groups);
}

size_t MoELayer::device_kept_bytes() const {
  return impl_->device ? impl_->device->kept_bytes() : 0;
}

moe::ExchangeStats MoELayer::exchange_stats() const {
  moe::ExchangeStats s = impl_->exchange_stats();
  if (impl_->device) s += impl_->device->exchange_stats();  // the GPU path's exchanges
  return s;
}

int64_t MoELayer::num_local_experts() const {
  return impl_->num_local_experts;
}
int64_t MoELayer::first_local_expert() const {
  return impl_->first_local_expert;
}

void MoELayer::init_weights(uint64_t seed) {
  const MoEConfig& c = impl_->config;
  const MoEWeights& w = impl_->weights;
  const double in_d = 1.0 / std::sqrt(static_cast<double>(c.hidden_size));
  const int64_t fr = c.residual_ffn_size > 0 ? c.residual_ffn_size : c.ffn_size;
  fill_uniform(w.router, seed, 1, in_d);
  const int64_t first = impl_->first_local_expert;
  fill_uniform(w.w1, seed, 2, in_d, first * (w.w1.numel() / impl_->num_local_experts));
  fill_uniform(w.w2, seed, 3, 1.0 / std::sqrt(static_cast<double>(c.ffn_size)),
               first * (w.w2.numel() / impl_->num_local_experts));
  fill_uniform(w.residual_w1, seed, 4, in_d);
  fill_uniform(w.residual_w2, seed, 5, 1.0 / std::sqrt(static_cast<double>(fr)));
  fill_uniform(w.residual_coef, seed, 6, in_d);
  fill_uniform(w.shared_w1, seed, 7, in_d);
  fill_uniform(w.shared_w2, seed, 8,
               1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(c.shared_ffn_size, 1))));
  fill_uniform(w.shared_gate, seed, 9, in_d);
}

std::vector<std::pair<std::string, Tensor>> MoELayer::named_parameters() const {
  const MoEWeights& w = impl_->weights;
  std::vector<std::pair<std::string, Tensor>> out;
  auto add = [&](const char* name, const Tensor& t) {
    if (t.defined()) out.emplace_back(name, t);
  };
  add("router.weight", w.router);
  add("router.selection_bias", w.selection_bias);
  add("experts.w1", w.w1);
  add("experts.w2", w.w2);
  add("residual_mlp.w1", w.residual_w1);
  add("residual_mlp.w2", w.residual_w2);
  add("residual_coefficient.weight", w.residual_coef);
  add("shared_expert.w1", w.shared_w1);
  add("shared_expert.w2", w.shared_w2);
  add("shared_expert_gate.weight", w.shared_gate);
  return out;
}

namespace {
// The GPU path of `impl`'s layer, over its device groups.
std::unique_ptr<MoEDeviceLayer> make_device_layer(const MoELayer::Impl& impl,
                                                  const Device& device) {
  return make_moe_device_layer(impl.config, impl.dtype, device, impl.device_groups);
}
}  // namespace

size_t MoELayer::device_kept_bytes_bound(const Device& device, int64_t tokens,
                                         const MoEForwardOptions& options) {
  if (device.is_cpu()) return 0;
  if (!impl_->device) impl_->device = make_device_layer(*impl_, device);
  return impl_->device->kept_bytes_bound(tokens, options);
}

const MoEOutput& MoELayer::forward(const Tensor& x, const MoEForwardOptions& options) {
  if (!x.device().is_cpu()) {  // device dispatch (moe_layer_dispatch.h)
    const MoEDeviceGroups& groups = impl_->device_groups;
    MOEX_CHECK(impl_->slice_group == nullptr || groups.slice != nullptr,
               "MoELayer: expert slicing on ", x.device().str(),
               " needs the tp group's GPU communicator (slice_experts)");
    MOEX_CHECK(impl_->expert_group == nullptr || groups.expert != nullptr,
               "MoELayer: expert parallelism on ", x.device().str(),
               " needs the expert group's GPU communicator (set_device_expert_group)");
    MOEX_CHECK(impl_->duplicate_group == nullptr || groups.duplicate != nullptr,
               "MoELayer: Duplicate Token Dropping on ", x.device().str(),
               " needs the tp group's GPU communicator (drop_duplicate_tokens)");
    if (!impl_->device) impl_->device = make_device_layer(*impl_, x.device());
    return impl_->device->forward(impl_->weights, x, options);
  }
  return impl_->forward(x, options);
}

void MoELayer::finish_stats() {
  if (impl_->device) impl_->device->finish_stats();
}

void MoELayer::bind_device_expert_buffers(const Device& device, const Tensor& w1, const Tensor& w2,
                                          const Tensor& dw1, const Tensor& dw2) {
  if (!impl_->device) impl_->device = make_device_layer(*impl_, device);
  impl_->device->bind_expert_buffers(w1, w2, dw1, dw2);
  impl_->bound_expert_buffers = true;
}

bool MoELayer::has_device_expert_buffers() const {
  return impl_->bound_expert_buffers;
}

void MoELayer::set_device_expert_group(dist::DeviceGroup* group) {
  check_same_ranks(group, impl_->expert_group, "set_device_expert_group", "expert group");
  impl_->device_groups.expert = group;
  if (impl_->device) impl_->device->set_groups(impl_->device_groups);
}

const MoEGradients& MoELayer::backward(const Tensor& dy, bool add_bound_expert_grads,
                                       const Tensor& dx) {
  if (!dy.device().is_cpu()) {
    MOEX_CHECK(impl_->device != nullptr, "MoELayer::backward: dy is on ", dy.device().str(),
               " but no forward ran there");
    return impl_->device->backward(dy, add_bound_expert_grads, dx);
  }
  return impl_->backward(dy);
}

}  // namespace moex
