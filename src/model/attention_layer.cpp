#include "model/attention_layer.h"

#include <cmath>

#include "core/rng.h"
#include "cpu/attention.h"
#include "cpu/rope.h"
#include "model/linear.h"

namespace moex::model {

AttentionLayer::AttentionLayer(const ModelConfig& config)
    : config_(config),
      d_(config.hidden_size),
      heads_(config.num_heads),
      kv_heads_(config.num_kv_heads),
      head_dim_(config.head_dim) {
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
  qkv_idx_ = params.declare_contiguous(
      {prefix + ".q_proj.weight", prefix + ".k_proj.weight", prefix + ".v_proj.weight"},
      {Shape{qd, d_}, Shape{kd, d_}, Shape{kd, d_}});
  if (config_.qkv_bias) {
    qkv_bias_idx_ = params.declare_contiguous(
        {prefix + ".q_proj.bias", prefix + ".k_proj.bias", prefix + ".v_proj.bias"},
        {Shape{qd}, Shape{kd}, Shape{kd}});
  }
  o_idx_ = params.declare(prefix + ".o_proj.weight", Shape{d_, qd});
  if (q_norm_) {
    q_norm_->declare(params, prefix + ".q_norm");
    k_norm_->declare(params, prefix + ".k_norm");
  }
}

void AttentionLayer::bind(const ParamBuffer& params, const ParamBuffer& grads) {
  qkv_w_ = bind_param(params, grads, qkv_idx_);  // the group starts at q_proj: one [Q, d] matrix
  qkv_b_ = bind_param(params, grads, qkv_bias_idx_);
  o_w_ = bind_param(params, grads, o_idx_);
  if (q_norm_) {
    q_norm_->bind(params, grads);
    k_norm_->bind(params, grads);
  }
}

void AttentionLayer::init(uint64_t seed, float std, float out_std) {
  const int64_t q_rows = (heads_ + 2 * kv_heads_) * head_dim_;
  Rng rng(seed, 1);
  for (int64_t i = 0; i < q_rows * d_; ++i) qkv_w_.w[i] = std * rng.normal();
  for (int64_t i = 0; i < d_ * heads_ * head_dim_; ++i) o_w_.w[i] = out_std * rng.normal();
  if (qkv_b_)
    for (int64_t i = 0; i < q_rows; ++i) qkv_b_.w[i] = 0.0f;
  if (q_norm_) {
    q_norm_->init();
    k_norm_->init();
  }
}

void AttentionLayer::project_qkv(const float* x, int64_t batch, int64_t seq_len, int64_t start_pos,
                                 float* q, float* k, float* v, bool save) {
  const int64_t n = batch * seq_len, qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_,
                q_rows = qd + 2 * kd;
  std::vector<float> qkv(static_cast<size_t>(n * q_rows));  // [N, Q]
  linear_forward(x, qkv_w_.w, qkv_b_.w, n, d_, q_rows, qkv.data());
  for (int64_t i = 0; i < n; ++i) {
    const float* row = qkv.data() + i * q_rows;
    std::copy(row, row + qd, q + i * qd);
    std::copy(row + qd, row + qd + kd, k + i * kd);
    std::copy(row + qd + kd, row + q_rows, v + i * kd);
  }
  if (q_norm_) {
    const bool per_head = config_.qk_norm == QKNorm::kPerHead;
    q_norm_->forward(q, per_head ? n * heads_ : n, q, save);
    k_norm_->forward(k, per_head ? n * kv_heads_ : n, k, save);
  }
  if (config_.positions == PositionType::kRope) {
    cpu::RopeShape rq{batch, seq_len, heads_, head_dim_, start_pos, config_.rope_theta};
    cpu::RopeShape rk{batch, seq_len, kv_heads_, head_dim_, start_pos, config_.rope_theta};
    cpu::rope_forward<float>(q, rq, q);
    cpu::rope_forward<float>(k, rk, k);
  }
}

void AttentionLayer::forward(const float* x, int64_t batch, int64_t seq_len, float* y, bool save) {
  const int64_t n = batch * seq_len, qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;
  std::vector<float> q(n * qd), k(n * kd), v(n * kd), attn(n * qd),
      probs(batch * heads_ * seq_len * seq_len);
  project_qkv(x, batch, seq_len, 0, q.data(), k.data(), v.data(), save);
  cpu::AttentionShape shape{batch, seq_len, seq_len, heads_, kv_heads_, head_dim_, 0, 0.0};
  cpu::attention_forward<float>(q.data(), k.data(), v.data(), shape, attn.data(), probs.data());
  linear_forward(attn.data(), o_w_.w, nullptr, n, qd, d_, y);
  if (save) {
    batch_ = batch;
    seq_len_ = seq_len;
    x_.assign(x, x + n * d_);
    q_ = std::move(q);
    k_ = std::move(k);
    v_ = std::move(v);
    probs_ = std::move(probs);
    attn_ = std::move(attn);
  }
}

void AttentionLayer::backward(const float* dy, float* dx) {
  const int64_t n = batch_ * seq_len_, qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_,
                q_rows = qd + 2 * kd;
  std::vector<float> dattn(n * qd);
  linear_backward(dy, attn_.data(), o_w_.w, n, qd, d_, dattn.data(), false, o_w_.g, nullptr);

  cpu::AttentionShape shape{batch_, seq_len_, seq_len_, heads_, kv_heads_, head_dim_, 0, 0.0};
  std::vector<float> dq(n * qd), dk(n * kd), dv(n * kd);
  std::vector<float> workspace(cpu::attention_backward_workspace_elems(shape));
  cpu::attention_backward<float>(dattn.data(), q_.data(), k_.data(), v_.data(), probs_.data(),
                                 shape, dq.data(), dk.data(), dv.data(), workspace.data(),
                                 workspace.size());
  if (config_.positions == PositionType::kRope) {
    cpu::rope_backward<float>(
        dq.data(), {batch_, seq_len_, heads_, head_dim_, 0, config_.rope_theta}, dq.data());
    cpu::rope_backward<float>(
        dk.data(), {batch_, seq_len_, kv_heads_, head_dim_, 0, config_.rope_theta}, dk.data());
  }
  if (q_norm_) {
    q_norm_->backward(dq.data(), dq.data());
    k_norm_->backward(dk.data(), dk.data());
  }
  std::vector<float> dqkv(n * q_rows);  // [N, Q]
  for (int64_t i = 0; i < n; ++i) {
    float* row = dqkv.data() + i * q_rows;
    std::copy(dq.data() + i * qd, dq.data() + (i + 1) * qd, row);
    std::copy(dk.data() + i * kd, dk.data() + (i + 1) * kd, row + qd);
    std::copy(dv.data() + i * kd, dv.data() + (i + 1) * kd, row + qd + kd);
  }
  linear_backward(dqkv.data(), x_.data(), qkv_w_.w, n, d_, q_rows, dx, false, qkv_w_.g, qkv_b_.g);
}

void AttentionLayer::forward_cached(const float* x, int64_t batch, int64_t new_len,
                                    int64_t start_pos, KVCacheView cache, float* y) {
  MOEX_CHECK(start_pos + new_len <= cache.capacity, "KV cache full: position ", start_pos + new_len,
             " exceeds capacity ", cache.capacity);
  const int64_t n = batch * new_len, qd = heads_ * head_dim_, kd = kv_heads_ * head_dim_;
  std::vector<float> q(n * qd), k(n * kd), v(n * kd), attn(n * qd);
  project_qkv(x, batch, new_len, start_pos, q.data(), k.data(), v.data(), false);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < new_len; ++t) {
      const int64_t src = (b * new_len + t) * kd, dst = (b * cache.capacity + start_pos + t) * kd;
      std::copy(k.data() + src, k.data() + src + kd, cache.k + dst);
      std::copy(v.data() + src, v.data() + src + kd, cache.v + dst);
    }
  }
  cpu::AttentionShape shape{batch,     new_len,   cache.capacity, heads_,
                            kv_heads_, head_dim_, start_pos,      0.0};
  std::vector<float> probs(batch * heads_ * new_len * cache.capacity);
  cpu::attention_forward<float>(q.data(), cache.k, cache.v, shape, attn.data(), probs.data());
  linear_forward(attn.data(), o_w_.w, nullptr, n, qd, d_, y);
}

}  // namespace moex::model
