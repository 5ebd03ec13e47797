#include "model/block.h"

#include <cmath>
#include <optional>
#include <string>

#include "model/lent_memory.h"
#include "ops/elementwise.h"

namespace moex::model {

Block::Block(const ModelConfig& config, int layer_idx, dist::Communicator* expert_group,
             const TensorParallel& tp)
    : config_(config),
      layer_idx_(layer_idx),
      norm1_(config.norm, config.hidden_size, config.norm_eps),
      norm2_(config.norm, config.hidden_size, config.norm_eps),
      attn_(config, tp),
      ffn_(config, config.layers.at(static_cast<size_t>(layer_idx)), expert_group, tp) {}

void Block::declare(ParamBuffer& params) {
  const std::string prefix = "model.layers." + std::to_string(layer_idx_);
  norm1_.declare(params, prefix + ".input_layernorm");
  attn_.declare(params, prefix + ".self_attn");
  norm2_.declare(params, prefix + ".post_attention_layernorm");
  ffn_.declare(params, prefix + ".mlp");
}

void Block::bind(const ParamViews& views) {
  norm1_.bind(views);
  attn_.bind(views);
  norm2_.bind(views);
  ffn_.bind(views);
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

void Block::run_forward(const Tensor& x, const Tensor& y, Arena& arena, bool save) {
  std::optional<ArenaScope> scope;
  if (!save) scope.emplace(arena);
  const Shape shape = x.shape();
  // The attention's and the FFN's outputs land in x1 and y, and the residual adds in place: no
  // backward reads them, so a kept step holds no buffer for them. The attention's input h =
  // norm1(x) lives in x1 too: the attention reads it only before it writes its output there, and
  // backward recomputes it from x (one norm pass; docs/gpu-model.md §What a training forward
  // keeps).
  // x1 and h2 are kept for backward: in the front of memory the model lends a saving forward
  // (the MoE layer keeps its rows in the rest; docs/gpu-model.md §Kept rows in gradient memory),
  // else in the arena.
  StepOptions step = step_;
  Tensor x1, h2;
  if (save && step.lent_rows.defined()) {
    x1 = take_front(step.lent_rows, shape, x.dtype());
    h2 = take_front(step.lent_rows, shape, x.dtype());
  }
  if (!x1.defined() || !h2.defined()) {
    x1 = arena.alloc(shape, x.dtype());
    h2 = arena.alloc(shape, x.dtype());
  }
  norm1_.forward(x, x1, arena, save);
  attn_.forward(x1, batch_, seq_len_, x1, arena, save);
  ops::add(x, x1, x1);
  norm2_.forward(x1, h2, arena, save);
  ffn_.forward(h2, y, arena, save, step);
  ops::add(x1, y, y);
}

size_t Block::lent_bytes_bound(const Device& device, int64_t n, DType dtype,
                               const StepOptions& step) {
  return 2 * lent_front_bytes(Shape{n, config_.hidden_size}, dtype) +
         ffn_.kept_bytes_bound(device, n, step);
}

void Block::forward(const Tensor& x, int64_t batch, int64_t seq_len, const Tensor& y, Arena& arena,
                    Keep keep, const StepOptions& step) {
  batch_ = batch;
  seq_len_ = seq_len;
  step_ = step;
  checkpointed_ = keep == Keep::kInputOnly;
  ffn_.hold_routing(false);
  x_ = checkpointed_ ? x : Tensor();
  run_forward(x, y, arena, /*save=*/keep == Keep::kAll);
}

void Block::backward(const Tensor& dy, const Tensor& dx, Arena& arena) {
  ArenaScope scope(arena);  // the recomputed activations and every temporary end here
  const Shape shape = dy.shape();
  if (checkpointed_) {
    const Tensor y = arena.alloc(shape, dy.dtype());
    ffn_.hold_routing(true);  // same experts and slots as the first pass
    run_forward(x_, y, arena, /*save=*/true);
    ffn_.hold_routing(false);
  }
  const Tensor g = arena.alloc(shape, dy.dtype()), dx1 = arena.alloc(shape, dy.dtype());
  ffn_.backward(dy, g, arena);
  norm2_.backward(g, g);
  ops::add(dy, g, dx1);
  const Tensor h = arena.alloc(shape, dy.dtype());
  norm1_.recompute(h, arena);  // the attention's input, overwritten by its output in forward
  attn_.backward(dx1, g, arena, h);
  norm1_.backward(g, g);
  ops::add(dx1, g, dx);
}

void Block::forward_paged(const Tensor& x, const Tensor& h, const PagedRows& rows,
                          const Tensor& k_pool, const Tensor& v_pool, const Tensor& y,
                          const NormLayer* next_norm, const Tensor& h_next, Arena& arena) {
  ArenaScope scope(arena);
  const Shape shape = x.shape();
  const Tensor a = arena.alloc(shape, x.dtype()), x1 = arena.alloc(shape, x.dtype()),
               h2 = arena.alloc(shape, x.dtype());
  attn_.forward_paged(h, rows, k_pool, v_pool, a, arena);
  norm2_.add_forward(x, a, x1, h2, arena);  // x1 = x + a, h2 = norm2(x1)
  StepOptions step;
  step.drop_tokens = false;  // a token's output may not depend on its batch
  step.stats = false;        // nothing reads a serving step's MoE statistics
  ffn_.forward(h2, a, arena, false, step);
  if (next_norm != nullptr)
    next_norm->add_forward(x1, a, y, h_next, arena);
  else
    ops::add(x1, a, y);
}

void Block::forward_cached(const Tensor& x, int64_t batch, int64_t new_len, int64_t start_pos,
                           const KVCacheView& cache, const Tensor& y, Arena& arena) {
  ArenaScope scope(arena);
  const Shape shape = x.shape();
  const Tensor h = arena.alloc(shape, x.dtype()), a = arena.alloc(shape, x.dtype()),
               x1 = arena.alloc(shape, x.dtype());
  norm1_.forward(x, h, arena, false);
  attn_.forward_cached(h, batch, new_len, start_pos, cache, a, arena);
  ops::add(x, a, x1);
  norm2_.forward(x1, h, arena, false);
  StepOptions step;
  step.drop_tokens = false;  // decoding keeps every route, as the batched serving path does
  ffn_.forward(h, a, arena, false, step);
  ops::add(x1, a, y);
}

}  // namespace moex::model
