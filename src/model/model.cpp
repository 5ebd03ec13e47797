#include "model/model.h"

#include <algorithm>

#include "core/rng.h"
#include "cpu/cross_entropy.h"
#include "cpu/embedding.h"
#include "model/linear.h"

namespace moex::model {

Model::Model(const ModelConfig& config) : config_(config) {
  config_.validate();
  const int64_t d = config_.hidden_size;
  final_norm_ = std::make_unique<NormLayer>(config_.norm, d, config_.norm_eps);
  for (int i = 0; i < config_.num_layers; ++i)
    blocks_.push_back(std::make_unique<Block>(config_, i));
  // Gradients get the same declarations, so every index means the same tensor in both buffers.
  for (ParamBuffer* buffer : {&params_, &grads_}) {
    embed_idx_ = buffer->declare("model.embed_tokens.weight", Shape{config_.vocab_size, d});
    if (config_.positions == PositionType::kLearned)
      pos_idx_ = buffer->declare("model.embed_positions.weight", Shape{config_.max_seq_len, d});
    for (auto& block : blocks_) block->declare(*buffer);
    final_norm_->declare(*buffer, "model.norm");
    if (!config_.tie_embeddings)
      head_idx_ = buffer->declare("lm_head.weight", Shape{config_.vocab_size, d});
  }
  params_.allocate(DType::kF32);
  grads_.allocate(DType::kF32);
  embed_ = bind_param(params_, grads_, embed_idx_);
  pos_ = bind_param(params_, grads_, pos_idx_);
  head_ = bind_param(params_, grads_, config_.tie_embeddings ? embed_idx_ : head_idx_);
  for (auto& block : blocks_) block->bind(params_, grads_);
  final_norm_->bind(params_, grads_);
  zero_grad();
}

void Model::init_weights(uint64_t seed) {
  std::fill(params_.flat().data<float>(), params_.flat().data<float>() + params_.flat().numel(),
            0.0f);
  const int64_t d = config_.hidden_size;
  Rng rng(seed, 0);
  for (int64_t i = 0; i < config_.vocab_size * d; ++i)
    embed_.w[i] = config_.init_std * rng.normal();
  if (pos_)
    for (int64_t i = 0; i < config_.max_seq_len * d; ++i)
      pos_.w[i] = config_.init_std * rng.normal();
  if (!config_.tie_embeddings)
    for (int64_t i = 0; i < config_.vocab_size * d; ++i)
      head_.w[i] = config_.init_std * rng.normal();
  for (auto& block : blocks_) block->init(seed);
  final_norm_->init();
  params_.flat().mark_written();
}

void Model::zero_grad() {
  std::fill(grads_.flat().data<float>(), grads_.flat().data<float>() + grads_.flat().numel(), 0.0f);
}

const float* Model::lm_head() const {
  return head_.w;
}

void Model::embed(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t start_pos,
                  float* x) const {
  const int64_t d = config_.hidden_size, n = batch * seq_len;
  cpu::embedding_forward<float>(ids, embed_.w, n, config_.vocab_size, d, x);
  if (!pos_) return;
  MOEX_CHECK(start_pos + seq_len <= config_.max_seq_len, "sequence of ", start_pos + seq_len,
             " tokens exceeds model.max_seq_len (", config_.max_seq_len, ")");
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq_len; ++t)
      for (int64_t j = 0; j < d; ++j)
        x[(b * seq_len + t) * d + j] += pos_.w[(start_pos + t) * d + j];
}

LossResult Model::forward(const int32_t* ids, const int32_t* targets, int64_t batch,
                          int64_t seq_len, const ForwardOptions& options) {
  const int64_t d = config_.hidden_size, n = batch * seq_len, v = config_.vocab_size;
  batch_ = batch;
  seq_len_ = seq_len;
  loss_scale_ = options.loss_scale;
  ids_.assign(ids, ids + n);
  block_out_.assign(blocks_.size() + 1, {});
  block_out_[0].resize(n * d);
  embed(ids, batch, seq_len, 0, block_out_[0].data());
  LossResult result;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    block_out_[i + 1].resize(n * d);
    // one Philox stream per (step, layer)
    const uint64_t offset = options.step * 1024 + i;
    const StepOptions step{options.training, options.seed, offset, options.loss_scale};
    blocks_[i]->forward(block_out_[i].data(), batch, seq_len, block_out_[i + 1].data(),
                        options.checkpoint_activations, step);
    if (blocks_[i]->ffn().is_moe()) {
      const MoEStats& s = blocks_[i]->ffn().stats();
      result.aux_loss += s.aux_loss;
      result.z_loss += s.z_loss;
      result.weighted_aux += s.weighted_loss;
    }
  }
  hidden_.resize(n * d);
  final_norm_->forward(block_out_.back().data(), n, hidden_.data(), true);
  dlogits_.resize(n * v);
  linear_forward(hidden_.data(), lm_head(), nullptr, n, d, v, dlogits_.data());
  // next-token targets are given aligned with ids: targets[t] is the token after ids[t]
  result.loss = cpu::cross_entropy_forward_backward<float>(
      dlogits_.data(), targets, n, v, cpu::kIgnoreIndex, 1.0f, dlogits_.data());
  for (int64_t i = 0; i < n; ++i) result.num_targets += targets[i] != cpu::kIgnoreIndex;
  return result;
}

void Model::backward() {
  const float scale = static_cast<float>(loss_scale_);
  const int64_t d = config_.hidden_size, n = batch_ * seq_len_, v = config_.vocab_size;
  if (scale != 1.0f)
    for (float& g : dlogits_) g *= scale;
  std::vector<float> dh(n * d);
  linear_backward(dlogits_.data(), hidden_.data(), lm_head(), n, d, v, dh.data(), false, head_.g,
                  nullptr);
  final_norm_->backward(dh.data(), dh.data());
  for (size_t i = blocks_.size(); i-- > 0;) blocks_[i]->backward(dh.data(), dh.data());
  cpu::embedding_backward<float>(ids_.data(), dh.data(), n, config_.vocab_size, d, embed_.g);
  if (pos_)
    for (int64_t b = 0; b < batch_; ++b)
      for (int64_t t = 0; t < seq_len_; ++t)
        for (int64_t j = 0; j < d; ++j) pos_.g[t * d + j] += dh[(b * seq_len_ + t) * d + j];
}

void Model::logits(const int32_t* ids, int64_t batch, int64_t seq_len, float* out) {
  const int64_t d = config_.hidden_size, n = batch * seq_len;
  std::vector<float> x(n * d), y(n * d);
  embed(ids, batch, seq_len, 0, x.data());
  for (auto& block : blocks_) {
    block->forward(x.data(), batch, seq_len, y.data(), false, StepOptions{});
    std::swap(x, y);
  }
  final_norm_->forward(x.data(), n, y.data(), false);
  linear_forward(y.data(), lm_head(), nullptr, n, d, config_.vocab_size, out);
}

KVCache Model::make_cache(int64_t batch, int64_t capacity) const {
  KVCache cache;
  cache.batch = batch;
  cache.capacity = capacity;
  const size_t per_layer =
      static_cast<size_t>(batch * capacity * config_.num_kv_heads * config_.head_dim);
  cache.k.assign(blocks_.size(), std::vector<float>(per_layer));
  cache.v.assign(blocks_.size(), std::vector<float>(per_layer));
  return cache;
}

void Model::forward_cached(const int32_t* ids, int64_t batch, int64_t new_len, KVCache& cache,
                           float* last_logits) {
  MOEX_CHECK(batch == cache.batch, "batch ", batch, " does not match the KV cache's ", cache.batch);
  const int64_t d = config_.hidden_size, n = batch * new_len;
  std::vector<float> x(n * d), y(n * d);
  embed(ids, batch, new_len, cache.length, x.data());
  for (size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i]->forward_cached(x.data(), batch, new_len, cache.length,
                               {cache.k[i].data(), cache.v[i].data(), cache.capacity}, y.data());
    std::swap(x, y);
  }
  cache.length += new_len;
  std::vector<float> last(batch * d);
  for (int64_t b = 0; b < batch; ++b)
    std::copy(x.data() + ((b + 1) * new_len - 1) * d, x.data() + (b + 1) * new_len * d,
              last.data() + b * d);
  final_norm_->forward(last.data(), batch, last.data(), false);
  linear_forward(last.data(), lm_head(), nullptr, batch, d, config_.vocab_size, last_logits);
}

std::vector<std::pair<int, MoEStats>> Model::moe_stats() const {
  std::vector<std::pair<int, MoEStats>> out;
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (blocks_[i]->ffn().is_moe())
      out.emplace_back(static_cast<int>(i), blocks_[i]->ffn().stats());
  return out;
}

}  // namespace moex::model
