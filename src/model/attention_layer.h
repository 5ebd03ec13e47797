// Self-attention of a block: one fused QKV projection (q_proj, k_proj, v_proj stored back to
// back), optional q/k RMSNorm (per head: Qwen3-MoE; over the whole projection: OLMoE), RoPE, causal
// GQA attention, o_proj. Legend: N = B*T tokens, H/Hkv heads, Dh head dim, Q = (H + 2 Hkv) * Dh.
#pragma once

#include <memory>
#include <vector>

#include "model/model_config.h"
#include "model/module.h"
#include "model/norm_layer.h"
#include "model/paged_kv.h"
#include "model/tensor_parallel.h"

namespace moex::model {

// Keys and values of one layer for decoding: [B, capacity, Hkv, Dh] each, compute dtype.
struct KVCacheView {
  Tensor k, v;
};

class AttentionLayer {
 public:
  // Under tensor parallelism this rank holds H/tp query and Hkv/tp key/value heads; forward and
  // backward all-reduce their partial results over the group (model/tensor_parallel.h).
  explicit AttentionLayer(const ModelConfig& config, const TensorParallel& tp = {});
  void declare(ParamBuffer& params,
               const std::string& prefix);  // prefix = "model.layers.i.self_attn"
  void bind(const ParamViews& views);
  void init(uint64_t seed, float std, float out_std);
  // The q/k norm weights, shared by the heads of every tp rank: their gradients here are this
  // rank's heads' part (Model::finish_gradients sums them over the group).
  std::vector<int> partial_grad_indices() const;

  // Training: x [N, d] (normed) -> y [N, d]; keeps what backward needs when `save`. y may alias x
  // (x is read only before y is written); x is then not kept, and backward takes it again.
  void forward(const Tensor& x, int64_t batch, int64_t seq_len, const Tensor& y, Arena& arena,
               bool save);
  // dx [N, d] written; parameter gradients accumulated. input: the forward's x, when its y
  // overwrote it (else undefined).
  void backward(const Tensor& dy, const Tensor& dx, Arena& arena, const Tensor& input = Tensor());
  // Decoding: the new tokens x [B*Tn, d] at positions start_pos.., keys/values written into the
  // cache at those positions.
  void forward_cached(const Tensor& x, int64_t batch, int64_t new_len, int64_t start_pos,
                      const KVCacheView& cache, const Tensor& y, Arena& arena);
  // Serving: x [N, d] holds several sequences' new tokens (rows, model/paged_kv.h); each row
  // writes its key/value into its slot of this layer's pools k, v [blocks, block_size, Hkv, Dh]
  // and attends over its own sequence's positions up to its own.
  void forward_paged(const Tensor& x, const PagedRows& rows, const Tensor& k_pool,
                     const Tensor& v_pool, const Tensor& y, Arena& arena);

 private:
  // q [B,T,H,Dh], k and v [B,T,Hkv,Dh] from x: projection, split, q/k norm, and RoPE at
  // start_pos unless start_pos < 0 (the caller rotates).
  void project_qkv(const Tensor& x, int64_t batch, int64_t seq_len, int64_t start_pos,
                   const Tensor& q, const Tensor& k, const Tensor& v, Arena& arena, bool save);

  const ModelConfig& config_;
  TensorParallel tp_;
  int64_t d_, heads_, kv_heads_, head_dim_;            // heads on this rank
  int qkv_idx_ = -1, qkv_bias_idx_ = -1, o_idx_ = -1;  // first index of the contiguous q/k/v group
  Param qkv_w_, qkv_b_, o_w_;  // qkv_w_ [Q, d] and qkv_b_ [Q]: spans of the three entries
  std::unique_ptr<NormLayer> q_norm_, k_norm_;
  // saved for backward
  int64_t batch_ = 0, seq_len_ = 0;
  Tensor x_;             // [N, d]; undefined when y overwrote it
  Tensor q_, k_, v_;     // after norm and RoPE: [B,T,H,Dh], [B,T,Hkv,Dh] x2
  Tensor attn_, stats_;  // [N, H*Dh] (input of o_proj); ops::attention_saved_shape
};

}  // namespace moex::model
