// The decoder-only MoE transformer (docs/architecture.md §Model family) on the CPU: embedding
// (+ learned positions), pre-norm blocks with dense or MoE FFNs, final norm, LM head (tied or
// not), cross-entropy.
// Parameters and gradients live in two ParamBuffers of the same layout, under Hugging Face names.
#pragma once

#include <memory>
#include <vector>

#include "model/block.h"
#include "model/model_config.h"

namespace moex::model {

struct ForwardOptions {
  bool training = false;
  bool checkpoint_activations = false;  // keep block inputs only; recompute in backward
  uint64_t seed = 0;                    // router noise (jitter, RSample, Gumbel, RTS) of this step
  uint64_t step = 0;                    // RNG offset: a fresh stream per step and layer
  // Weight of this forward's loss (cross-entropy and MoE aux/z terms) in the objective that
  // backward differentiates: 1/grad_accum when micro-batches are averaged.
  double loss_scale = 1.0;
};

struct LossResult {
  double loss = 0;          // mean next-token cross-entropy over counted positions
  double aux_loss = 0;      // sum over MoE layers of the unweighted load-balancing losses
  double z_loss = 0;        // sum over MoE layers of the unweighted z-losses
  double weighted_aux = 0;  // what the aux and z terms add to the training objective
  int64_t num_targets = 0;  // positions that counted
};

// Keys and values of every layer: [L][B, capacity, Hkv, Dh].
struct KVCache {
  int64_t batch = 0, capacity = 0, length = 0;
  std::vector<std::vector<float>> k, v;
};

class Model {
 public:
  explicit Model(const ModelConfig& config);
  // Blocks and layers hold references into config_ and views into the parameter buffers, so a
  // Model stays where it was built (hold it by unique_ptr to pass it around).
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = delete;
  Model& operator=(Model&&) = delete;
  const ModelConfig& config() const { return config_; }
  ParamBuffer& params() { return params_; }
  ParamBuffer& grads() { return grads_; }
  const ParamBuffer& params() const { return params_; }

  void init_weights(uint64_t seed);
  void zero_grad();

  // ids, targets [B, T]; targets of -100 are ignored. Saves activations for backward.
  LossResult forward(const int32_t* ids, const int32_t* targets, int64_t batch, int64_t seq_len,
                     const ForwardOptions& options);
  // Accumulates into grads(): d(loss + weighted aux) / d(params), times the forward's loss_scale.
  void backward();

  // Logits [B, T, V] without saving anything (evaluation).
  void logits(const int32_t* ids, int64_t batch, int64_t seq_len, float* out);
  // Decoding: appends new_len tokens per sequence to the cache and writes the logits of the
  // last new token of each sequence, [B, V].
  KVCache make_cache(int64_t batch, int64_t capacity) const;
  void forward_cached(const int32_t* ids, int64_t batch, int64_t new_len, KVCache& cache,
                      float* last_logits);

  // Per MoE layer statistics of the last forward (layer index, stats).
  std::vector<std::pair<int, MoEStats>> moe_stats() const;

 private:
  void embed(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t start_pos, float* x) const;
  const float* lm_head() const;

  ModelConfig config_;
  ParamBuffer params_, grads_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<NormLayer> final_norm_;
  int embed_idx_ = -1, pos_idx_ = -1, head_idx_ = -1;
  Param embed_, pos_, head_;
  // saved by forward
  int64_t batch_ = 0, seq_len_ = 0;
  double loss_scale_ = 1.0;
  std::vector<int32_t> ids_;
  std::vector<std::vector<float>>
      block_out_;               // [L][N, d] (checkpointing keeps only block inputs inside blocks)
  std::vector<float> hidden_;   // [N, d] after the final norm
  std::vector<float> dlogits_;  // [N, V] d(mean CE)/d(logits)
};

}  // namespace moex::model
