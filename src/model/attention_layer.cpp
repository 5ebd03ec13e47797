#include "model/attention_layer.h"

#include <algorithm>
#include <cmath>

#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#include "ops/paged_attention.h"
#include "ops/rope.h"

namespace moex::model {

AttentionLayer::AttentionLayer(const ModelConfig& config, const TensorParallel& tp)
    : config_(config),
      tp_(tp),
      d_(config.hidden_size),
      heads_(tp.part(config.num_heads)),
      kv_heads_(tp.part(config.num_kv_heads)),
      head_dim_(config.head_dim) {
  // A norm over the whole projection would need every rank's heads.
  MOEX_CHECK(!tp.active() || config.qk_norm != QKNorm::kFull,
             "tensor parallelism: a q/k norm over the whole projection (OLMoE) is not split");
  if (config.qk_norm == QKNorm::kPerHead) {
    q_norm_ = std::make_unique<NormLayer>(NormType::kRMSNorm, head_dim_, config.norm_eps);
    k_norm_ = std::make_unique<NormLayer>(NormType::kRMSNorm, head_dim_, config.norm_eps);
  } else if (config.qk_norm == QKNorm::kFull) {
    q_norm_ = std::make_unique<NormLayer>(NormType::kRMSNorm, heads_ * head_dim_, config.norm_eps);
    k_norm_ =
        std::make_unique<NormLayer>(NormType::kRMSNorm, kv_heads_ * head_dim_, config.norm_eps);
  }
}

void AttentionLayer::declare(ParamBuffer& params, const std::string& prefix) {
  const int64_t qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;
  // Under tp: this rank's heads' rows of q/k/v (split_dim 0), their columns of o_proj (1).
  qkv_idx_ = params.declare_contiguous(
      {prefix + ".q_proj.weight", prefix + ".k_proj.weight", prefix + ".v_proj.weight"},
      {Shape{qd, d_}, Shape{kd, d_}, Shape{kd, d_}}, tp_.active() ? 0 : -1);
  if (config_.qkv_bias) {
    qkv_bias_idx_ = params.declare_contiguous(
        {prefix + ".q_proj.bias", prefix + ".k_proj.bias", prefix + ".v_proj.bias"},
        {Shape{qd}, Shape{kd}, Shape{kd}}, tp_.active() ? 0 : -1);
  }
  o_idx_ = params.declare(prefix + ".o_proj.weight", Shape{d_, qd}, tp_.active() ? 1 : -1);
  if (q_norm_) {
    q_norm_->declare(params, prefix + ".q_norm");
    k_norm_->declare(params, prefix + ".k_norm");
  }
}

void AttentionLayer::bind(const ParamViews& views) {
  const int64_t q_rows = (heads_ + 2 * kv_heads_) * head_dim_;
  // q/k/v are three entries back to back: one [Q, d] matrix (and one [Q] bias).
  auto fused = [&](int first, const Shape& shape) {
    Param p;
    p.index = first;
    p.entries = 3;
    p.writes = views.writes;
    p.w = views.compute.span(first, first + 2, shape);
    p.g = views.grads.span(first, first + 2, shape);
    return p;
  };
  qkv_w_ = fused(qkv_idx_, Shape{q_rows, d_});
  qkv_b_ = qkv_bias_idx_ >= 0 ? fused(qkv_bias_idx_, Shape{q_rows}) : Param{};
  o_w_ = bind_param(views, o_idx_);
  if (q_norm_) {
    q_norm_->bind(views);
    k_norm_->bind(views);
  }
}

std::vector<int> AttentionLayer::partial_grad_indices() const {
  if (!q_norm_ || !tp_.active()) return {};
  return {q_norm_->param_index(), k_norm_->param_index()};
}

void AttentionLayer::init(uint64_t seed, float std, float out_std) {
  // One stream over the whole fused [q; k; v] matrix, then o_proj: every rank draws the numbers
  // its part has in the whole tensors.
  const int64_t qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;  // this rank's rows
  const int64_t q_all = config_.num_heads * head_dim_, kv_all = config_.num_kv_heads * head_dim_;
  const Tensor& w = qkv_w_.w;
  const int split = tp_.active() ? 0 : -1;
  fill_normal_part(w.slice(0, qd), q_all, d_, split, tp_, std, seed, 1, 0);
  fill_normal_part(w.slice(qd, qd + kd), kv_all, d_, split, tp_, std, seed, 1, q_all * d_);
  fill_normal_part(w.slice(qd + kd, qd + 2 * kd), kv_all, d_, split, tp_, std, seed, 1,
                   (q_all + kv_all) * d_);
  fill_normal_part(o_w_.w, d_, q_all, tp_.active() ? 1 : -1, tp_, out_std, seed, 1,
                   (q_all + 2 * kv_all) * d_);
  if (qkv_b_) std::fill(qkv_b_.w.data<float>(), qkv_b_.w.data<float>() + qkv_b_.w.numel(), 0.0f);
  if (q_norm_) {
    q_norm_->init();
    k_norm_->init();
  }
}

void AttentionLayer::project_qkv(const Tensor& x, int64_t batch, int64_t seq_len, int64_t start_pos,
                                 const Tensor& q, const Tensor& k, const Tensor& v, Arena& arena,
                                 bool save) {
  const int64_t n = batch * seq_len, qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;
  const DType dt = x.dtype();
  // Normed q/k need their inputs kept for the norm's backward: allocate those before the scope.
  const Tensor q_in = q_norm_ ? arena.alloc(Shape{n, qd}, dt) : q.view(Shape{n, qd});
  const Tensor k_in = q_norm_ ? arena.alloc(Shape{n, kd}, dt) : k.view(Shape{n, kd});
  // start_pos < 0: the caller rotates (each row at its own position). Without q/k norms the split
  // rotates as well; with them the rotation follows the norms.
  const bool rotate = config_.positions == PositionType::kRope && start_pos >= 0;
  {
    ArenaScope scope(arena);
    const Tensor qkv = arena.alloc(Shape{n, qd + 2 * kd}, dt);  // [N, Q]
    ops::linear(x, qkv_w_.w, qkv_b_.w, qkv);
    ops::split_qkv(qkv, std::max<int64_t>(start_pos, 0),
                   rotate && !q_norm_ ? config_.rope_theta : 0.0, q_in.view(q.shape()),
                   k_in.view(k.shape()), v);
  }
  if (!q_norm_) return;
  const bool per_head = config_.qk_norm == QKNorm::kPerHead;
  q_norm_->forward(per_head ? q_in.view(Shape{n * heads_, head_dim_}) : q_in, q, arena, save);
  k_norm_->forward(per_head ? k_in.view(Shape{n * kv_heads_, head_dim_}) : k_in, k, arena, save);
  if (rotate) {
    ops::rope(q, start_pos, config_.rope_theta, q);
    ops::rope(k, start_pos, config_.rope_theta, k);
  }
}

void AttentionLayer::forward(const Tensor& x, int64_t batch, int64_t seq_len, const Tensor& y,
                             Arena& arena, bool save) {
  const int64_t n = batch * seq_len;
  const DType dt = x.dtype();
  const Tensor q = arena.alloc(Shape{batch, seq_len, heads_, head_dim_}, dt);
  const Tensor k = arena.alloc(Shape{batch, seq_len, kv_heads_, head_dim_}, dt);
  const Tensor v = arena.alloc(Shape{batch, seq_len, kv_heads_, head_dim_}, dt);
  const Tensor attn = arena.alloc(Shape{n, heads_ * head_dim_}, dt);
  const Tensor stats = arena.alloc(
      ops::attention_saved_shape(x.device(), batch, heads_, seq_len, seq_len), DType::kF32);
  project_qkv(x, batch, seq_len, 0, q, k, v, arena, save);
  ops::attention(q, k, v, 0, attn.view(q.shape()), stats);
  ops::linear(attn, o_w_.w, Tensor(), y);
  tp_.all_reduce(y);  // each rank's heads add their part
  if (save) {
    batch_ = batch;
    seq_len_ = seq_len;
    x_ = y.raw_data() == x.raw_data() ? Tensor() : x;
    q_ = q;
    k_ = k;
    v_ = v;
    attn_ = attn;
    stats_ = stats;
  }
}

void AttentionLayer::backward(const Tensor& dy, const Tensor& dx, Arena& arena,
                              const Tensor& input) {
  const Tensor& x = x_.defined() ? x_ : input;
  MOEX_CHECK(x.defined(),
             "AttentionLayer::backward: the forward's output overwrote its input; "
             "pass the input again");
  ArenaScope scope(arena);
  const int64_t n = batch_ * seq_len_, qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;
  const DType dt = dy.dtype();
  const Tensor dattn = arena.alloc(Shape{n, qd}, dt);
  ops::linear_backward(dy, attn_, o_w_.w, dattn, false, o_w_.g, o_w_.grad_accumulates(), Tensor());
  const Tensor dq = arena.alloc(q_.shape(), dt), dk = arena.alloc(k_.shape(), dt),
               dv = arena.alloc(v_.shape(), dt);
  ops::attention_backward(dattn.view(q_.shape()), q_, k_, v_, attn_.view(q_.shape()), stats_, dq,
                          dk, dv);
  const bool rope = config_.positions == PositionType::kRope;
  if (q_norm_) {  // the rotation came after the norms; without them the merge rotates back
    if (rope) {
      ops::rope_backward(dq, 0, config_.rope_theta, dq);
      ops::rope_backward(dk, 0, config_.rope_theta, dk);
    }
    q_norm_->backward(dq, dq);
    k_norm_->backward(dk, dk);
  }
  const Tensor dqkv = arena.alloc(Shape{n, qd + 2 * kd}, dt);  // [N, Q]
  ops::merge_qkv_backward(dq, dk, dv, 0, rope && !q_norm_ ? config_.rope_theta : 0.0, dqkv);
  ops::linear_backward(dqkv, x, qkv_w_.w, dx, false, qkv_w_.g, qkv_w_.grad_accumulates(),
                       qkv_b_.grad_to_add());
  tp_.all_reduce(dx);
}

void AttentionLayer::forward_cached(const Tensor& x, int64_t batch, int64_t new_len,
                                    int64_t start_pos, const KVCacheView& cache, const Tensor& y,
                                    Arena& arena) {
  const int64_t capacity = cache.k.dim(1);
  MOEX_CHECK(start_pos + new_len <= capacity, "KV cache full: position ", start_pos + new_len,
             " exceeds capacity ", capacity);
  ArenaScope scope(arena);
  const int64_t n = batch * new_len, kd = kv_heads_ * head_dim_;
  const DType dt = x.dtype();
  const Tensor q = arena.alloc(Shape{batch, new_len, heads_, head_dim_}, dt);
  const Tensor k = arena.alloc(Shape{batch, new_len, kv_heads_, head_dim_}, dt);
  const Tensor v = arena.alloc(Shape{batch, new_len, kv_heads_, head_dim_}, dt);
  project_qkv(x, batch, new_len, start_pos, q, k, v, arena, false);
  // Each sequence's new rows go to positions start_pos.. of its cache rows.
  const Shape cache_rows{batch, capacity * kd}, new_rows{batch, new_len * kd};
  ops::copy_columns(k.view(new_rows), 0, cache.k.view(cache_rows), start_pos * kd, new_len * kd);
  ops::copy_columns(v.view(new_rows), 0, cache.v.view(cache_rows), start_pos * kd, new_len * kd);
  const Tensor attn = arena.alloc(Shape{n, heads_ * head_dim_}, dt);
  const Tensor stats = arena.alloc(
      ops::attention_saved_shape(x.device(), batch, heads_, new_len, capacity), DType::kF32);
  ops::attention(q, cache.k, cache.v, start_pos, attn.view(q.shape()), stats);
  ops::linear(attn, o_w_.w, Tensor(), y);
  tp_.all_reduce(y);  // each rank's heads add their part
}

void AttentionLayer::forward_paged(const Tensor& x, const PagedRows& rows, const Tensor& k_pool,
                                   const Tensor& v_pool, const Tensor& y, Arena& arena) {
  ArenaScope scope(arena);
  const int64_t n = x.dim(0), kd = kv_heads_ * head_dim_;
  const DType dt = x.dtype();
  const Tensor q = arena.alloc(Shape{1, n, heads_, head_dim_}, dt);
  const Tensor attn = arena.alloc(Shape{n, heads_, head_dim_}, dt);
  const double theta = config_.positions == PositionType::kRope ? config_.rope_theta : 0.0;
  // Every row's key and value go into the pool first, so rows of one sequence in this step see
  // each other.
  const int64_t slots = k_pool.dim(0) * k_pool.dim(1);
  if (!q_norm_) {
    // Split, RoPE and the pool writes in one op.
    const Tensor qkv = arena.alloc(Shape{n, heads_ * head_dim_ + 2 * kd}, dt);
    ops::linear(x, qkv_w_.w, qkv_b_.w, qkv);
    ops::write_paged_qkv(qkv, head_dim_, rows.row_pos, theta, rows.slots, q, k_pool, v_pool);
  } else {
    const Tensor k = arena.alloc(Shape{1, n, kv_heads_, head_dim_}, dt);
    const Tensor v = arena.alloc(Shape{1, n, kv_heads_, head_dim_}, dt);
    project_qkv(x, 1, n, /*start_pos=*/-1, q, k, v, arena, false);  // RoPE per row below
    if (theta > 0) {
      ops::rope(q, rows.row_pos, theta, q);
      ops::rope(k, rows.row_pos, theta, k);
    }
    ops::scatter_rows(k.view(Shape{n, kd}), rows.slots, k_pool.view(Shape{slots, kd}));
    ops::scatter_rows(v.view(Shape{n, kd}), rows.slots, v_pool.view(Shape{slots, kd}));
  }
  ops::paged_attention(q.view(Shape{n, heads_, head_dim_}), k_pool, v_pool, rows.tables,
                       rows.row_seq, rows.row_pos, attn, rows.tiles, rows.rest_rows);
  ops::linear(attn.view(Shape{n, heads_ * head_dim_}), o_w_.w, Tensor(), y);
  tp_.all_reduce(y);  // each rank's heads add their part
}

}  // namespace moex::model
