// A pre-norm decoder block: x + attn(norm1(x)), then + ffn(norm2(.)). With activation
// checkpointing the block keeps only its input in forward and recomputes the rest in backward,
// with the MoE routing of the first pass held fixed so the recomputation is exact.
#pragma once

#include "model/attention_layer.h"
#include "model/ffn_layer.h"
#include "model/norm_layer.h"

namespace moex::model {

class Block {
 public:
  // expert_group and tp: see FfnLayer and AttentionLayer.
  Block(const ModelConfig& config, int layer_idx, dist::Communicator* expert_group = nullptr,
        const TensorParallel& tp = {});
  void declare(ParamBuffer& params);
  void bind(const ParamViews& views);
  void init(uint64_t seed);

  // What forward keeps for backward: every activation, only the input (activation
  // checkpointing: backward recomputes the rest with the routing held fixed), or nothing (eval).
  enum class Keep { kAll, kInputOnly, kNothing };
  // x, y [B*T, d]; y may not alias x. x must stay alive until backward (the model keeps every
  // block's input in the step arena).
  void forward(const Tensor& x, int64_t batch, int64_t seq_len, const Tensor& y, Arena& arena,
               Keep keep, const StepOptions& step);
  // The most bytes a saving forward of n tokens (activations of `dtype`) keeps in
  // step.lent_rows: its x1 and h2 [n, d], then the MoE layer's rows.
  size_t lent_bytes_bound(const Device& device, int64_t n, DType dtype, const StepOptions& step);
  // dy -> dx [B*T, d] (dx may alias dy); parameter gradients accumulated.
  void backward(const Tensor& dy, const Tensor& dx, Arena& arena);
  void forward_cached(const Tensor& x, int64_t batch, int64_t new_len, int64_t start_pos,
                      const KVCacheView& cache, const Tensor& y, Arena& arena);
  // Serving (AttentionLayer::forward_paged); MoE routes are never dropped here. h = the input
  // norm of x (input_norm(), formed by the caller, or by the previous block as its h_next); y =
  // the block's output. With next_norm (the next block's input norm), h_next = next_norm(y) comes
  // out of the same pass as the residual add.
  void forward_paged(const Tensor& x, const Tensor& h, const PagedRows& rows, const Tensor& k_pool,
                     const Tensor& v_pool, const Tensor& y, const NormLayer* next_norm,
                     const Tensor& h_next, Arena& arena);
  NormLayer& input_norm() { return norm1_; }

  FfnLayer& ffn() { return ffn_; }
  const AttentionLayer& attention() const { return attn_; }

 private:
  // x -> y; with `save` every module keeps its activations, otherwise they are freed at the end.
  void run_forward(const Tensor& x, const Tensor& y, Arena& arena, bool save);

  const ModelConfig& config_;
  int layer_idx_;
  NormLayer norm1_, norm2_;
  AttentionLayer attn_;
  FfnLayer ffn_;
  // per step
  int64_t batch_ = 0, seq_len_ = 0;
  bool checkpointed_ = false;
  StepOptions step_;
  Tensor x_;  // [N, d], kept only under checkpointing
};

}  // namespace moex::model
