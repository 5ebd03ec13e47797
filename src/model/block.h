// A pre-norm decoder block: x + attn(norm1(x)), then + ffn(norm2(.)). With activation
// checkpointing the block keeps only its input in forward and recomputes the rest in backward,
// with the MoE routing of the first pass held fixed so the recomputation is exact.
#pragma once

#include <vector>

#include "model/attention_layer.h"
#include "model/ffn_layer.h"
#include "model/norm_layer.h"

namespace moex::model {

class Block {
 public:
  Block(const ModelConfig& config, int layer_idx);
  void declare(ParamBuffer& params);
  void bind(const ParamBuffer& params, const ParamBuffer& grads);
  void init(uint64_t seed);

  // x, y [B*T, d]; y may not alias x.
  void forward(const float* x, int64_t batch, int64_t seq_len, float* y, bool checkpoint,
               const StepOptions& step);
  // dy -> dx [B*T, d] (dx may alias dy); parameter gradients accumulated.
  void backward(const float* dy, float* dx);
  void forward_cached(const float* x, int64_t batch, int64_t new_len, int64_t start_pos,
                      KVCacheView cache, float* y);

  FfnLayer& ffn() { return ffn_; }

 private:
  void run_forward(const float* x, float* y, bool save);

  const ModelConfig& config_;
  int layer_idx_;
  NormLayer norm1_, norm2_;
  AttentionLayer attn_;
  FfnLayer ffn_;
  // per step
  int64_t batch_ = 0, seq_len_ = 0;
  bool checkpointed_ = false;
  StepOptions step_;
  std::vector<float> x_;  // [N, d], kept only under checkpointing
};

}  // namespace moex::model
