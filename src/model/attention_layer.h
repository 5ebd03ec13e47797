// Self-attention of a block: fused QKV projection (q_proj, k_proj, v_proj stored back to back),
// optional q/k RMSNorm (per head: Qwen3-MoE; over the whole projection: OLMoE), RoPE, causal GQA
// attention, o_proj. Legend: N = B*T tokens, H/Hkv heads, Dh head dim, Q = (H + 2 Hkv) * Dh.
#pragma once

#include <memory>
#include <vector>

#include "model/model_config.h"
#include "model/module.h"
#include "model/norm_layer.h"

namespace moex::model {

// Keys and values of one layer for decoding: [B, capacity, Hkv, Dh] each.
struct KVCacheView {
  float* k = nullptr;
  float* v = nullptr;
  int64_t capacity = 0;
};

class AttentionLayer {
 public:
  explicit AttentionLayer(const ModelConfig& config);
  void declare(ParamBuffer& params,
               const std::string& prefix);  // prefix = "model.layers.i.self_attn"
  void bind(const ParamBuffer& params, const ParamBuffer& grads);
  void init(uint64_t seed, float std, float out_std);

  // Training: x [B*T, d] (normed) -> y [B*T, d]; saves what backward needs when `save`.
  void forward(const float* x, int64_t batch, int64_t seq_len, float* y, bool save);
  // dx [B*T, d] written; parameter gradients accumulated.
  void backward(const float* dy, float* dx);
  // Decoding: the new tokens x [B*Tn, d] at positions start_pos.., keys/values appended to the
  // cache.
  void forward_cached(const float* x, int64_t batch, int64_t new_len, int64_t start_pos,
                      KVCacheView cache, float* y);

 private:
  void project_qkv(const float* x, int64_t batch, int64_t seq_len, int64_t start_pos, float* q,
                   float* k, float* v, bool save);

  const ModelConfig& config_;
  int64_t d_, heads_, kv_heads_, head_dim_;
  int qkv_idx_ = -1, qkv_bias_idx_ = -1, o_idx_ = -1;  // first index of the contiguous q/k/v group
  Param qkv_w_, qkv_b_, o_w_;
  std::unique_ptr<NormLayer> q_norm_, k_norm_;
  // saved for backward
  int64_t batch_ = 0, seq_len_ = 0;
  std::vector<float> x_;          // [N, d]
  std::vector<float> q_, k_, v_;  // after norm and rope: [N, H, Dh], [N, Hkv, Dh] x2
  std::vector<float> probs_;      // [B, H, T, T]
  std::vector<float> attn_;       // [N, H*Dh], input of o_proj
};

}  // namespace moex::model
