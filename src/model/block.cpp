#include "model/block.h"

#include <string>

namespace moex::model {

Block::Block(const ModelConfig& config, int layer_idx)
    : config_(config),
      layer_idx_(layer_idx),
      norm1_(config.norm, config.hidden_size, config.norm_eps),
      norm2_(config.norm, config.hidden_size, config.norm_eps),
      attn_(config),
      ffn_(config, config.layers.at(static_cast<size_t>(layer_idx))) {}

void Block::declare(ParamBuffer& params) {
  const std::string prefix = "model.layers." + std::to_string(layer_idx_);
  norm1_.declare(params, prefix + ".input_layernorm");
  attn_.declare(params, prefix + ".self_attn");
  norm2_.declare(params, prefix + ".post_attention_layernorm");
  ffn_.declare(params, prefix + ".mlp");
}

void Block::bind(const ParamBuffer& params, const ParamBuffer& grads) {
  norm1_.bind(params, grads);
  attn_.bind(params, grads);
  norm2_.bind(params, grads);
  ffn_.bind(params, grads);
}

void Block::init(uint64_t seed) {
  const float std = config_.init_std;
  // GPT-2/Megatron scaling of the projections that write into the residual stream.
  const float out_std = std / std::sqrt(2.0f * static_cast<float>(config_.num_layers));
  norm1_.init();
  norm2_.init();
  attn_.init(seed * 1000003ull + 2 * layer_idx_, std, out_std);
  ffn_.init(seed * 1000003ull + 2 * layer_idx_ + 1, std, out_std);
}

void Block::run_forward(const float* x, float* y, bool save) {
  const int64_t n = batch_ * seq_len_, d = config_.hidden_size;
  std::vector<float> h(n * d), a(n * d);
  norm1_.forward(x, n, h.data(), save);
  attn_.forward(h.data(), batch_, seq_len_, a.data(), save);
  for (int64_t i = 0; i < n * d; ++i) y[i] = x[i] + a[i];  // x1
  norm2_.forward(y, n, h.data(), save);
  ffn_.forward(h.data(), n, a.data(), save, step_);
  for (int64_t i = 0; i < n * d; ++i) y[i] += a[i];
}

void Block::forward(const float* x, int64_t batch, int64_t seq_len, float* y, bool checkpoint,
                    const StepOptions& step) {
  batch_ = batch;
  seq_len_ = seq_len;
  step_ = step;
  checkpointed_ = checkpoint;
  ffn_.hold_routing(false);
  if (checkpoint) x_.assign(x, x + batch * seq_len * config_.hidden_size);
  run_forward(x, y, /*save=*/!checkpoint);
}

void Block::backward(const float* dy, float* dx) {
  const int64_t n = batch_ * seq_len_, d = config_.hidden_size;
  if (checkpointed_) {
    std::vector<float> y(n * d);
    ffn_.hold_routing(true);  // same experts and slots as the first pass
    run_forward(x_.data(), y.data(), /*save=*/true);
    ffn_.hold_routing(false);
  }
  std::vector<float> dx1(dy, dy + n * d), g(n * d);
  ffn_.backward(dy, g.data());
  norm2_.backward(g.data(), g.data());
  for (int64_t i = 0; i < n * d; ++i) dx1[i] += g[i];
  attn_.backward(dx1.data(), g.data());
  norm1_.backward(g.data(), g.data());
  for (int64_t i = 0; i < n * d; ++i) dx[i] = dx1[i] + g[i];
}

void Block::forward_cached(const float* x, int64_t batch, int64_t new_len, int64_t start_pos,
                           KVCacheView cache, float* y) {
  const int64_t n = batch * new_len, d = config_.hidden_size;
  std::vector<float> h(n * d), a(n * d);
  norm1_.forward(x, n, h.data(), false);
  attn_.forward_cached(h.data(), batch, new_len, start_pos, cache, a.data());
  for (int64_t i = 0; i < n * d; ++i) y[i] = x[i] + a[i];
  norm2_.forward(y, n, h.data(), false);
  ffn_.forward(h.data(), n, a.data(), false, StepOptions{});
  for (int64_t i = 0; i < n * d; ++i) y[i] += a[i];
}

}  // namespace moex::model
