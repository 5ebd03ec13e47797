// The MoE layer (docs/architecture.md §MoE layer): router -> dispatch plan -> permute -> experts
// -> combine, plus PR-MoE's residual MLP and shared experts, with an explicit backward that
// mirrors every stage.
// A thin Tensor-level front over the templated stage kernels of router.h, dispatch_plan.h and
// experts.h; the CPU implementation runs in f32 (the real path) or f64 (gradient checks).
//
// Weights (E experts, El = E/ep of them on this rank, d hidden, F ffn, F1 = F or 2F for SwiGLU,
// Fr/Fs residual/shared ffn):
//   router [E,d]  selection_bias [E]  w1 [El,F1,d]  w2 [El,d,F]
//   residual_w1 [Fr1,d]  residual_w2 [d,Fr]  residual_coef [2,d]     (config.residual)
//   shared_w1 [Fs1,d]  shared_w2 [d,Fs]  shared_gate [1,d]           (shared_ffn_size > 0,
//   shared_gate)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "moe/dispatch_plan.h"
#include "moe/expert_exchange.h"
#include "moe/moe_config.h"

namespace moex {

namespace dist {
class Communicator;
class DeviceGroup;
}  // namespace dist

// One forward's routing decision: the selection and the plan built from it. Passing it back to
// forward holds routing fixed while weights or inputs move (finite-difference checks,
// activation-checkpoint recomputation).
struct MoERouting {
  std::vector<int32_t> topk_idx;  // [T,k]
  moe::DispatchPlan plan;
};

struct MoEForwardOptions {
  bool training = false;  // jitter, RSample, Gumbel 2nd expert and the train capacity factor
  uint64_t seed = 0;      // Philox seed and offset of this call (router.h: moe_rng_offset)
  uint64_t offset = 0;
  const MoERouting* fixed_routing = nullptr;  // reuse this selection and plan instead of choosing
  // Weight of weighted_loss in the objective backward differentiates: 1/grad_accum when the
  // trainer averages micro-batches (DeepSpeed divides the whole loss, aux terms included).
  double loss_scale = 1.0;
  // False: every route is kept (capacity = the token count), so a token's output does not depend
  // on which other tokens share its batch (serving batches requests; docs/moe-layer.md).
  bool drop_tokens = true;
  // False: no backward follows this forward (evaluation, decoding), so the GPU layer keeps none of
  // its expert activations (they live in a scratch shared by the model's layers).
  bool keep_for_backward = true;
  // With keep_for_backward: the backward follows before any other MoE layer's forward (an
  // activation-checkpoint recompute), so the GPU layer may keep its expert activations in the
  // shared scratch instead of buffers of its own. Ignored on the CPU.
  bool keep_in_scratch = false;
  // With keep_for_backward on a GPU: device memory the caller lends for the expert rows the
  // forward keeps, untouched by the caller until this layer's backward has run. The layer keeps
  // them there when they fit (device_kept_bytes_bound), else in buffers of its own. Undefined:
  // none lent. Ignored on the CPU.
  Tensor lent_rows;
  // Communication-aware activation checkpointing (docs/parallelism.md §CAC; CPU layer with an
  // expert group, ignored otherwise). keep_exchange: this forward is a checkpointed first pass
  // that a recompute will repeat, so its all-to-all results (the rows this rank's experts
  // received, the expert outputs brought back, the exchanged counts) stay valid for it.
  // reuse_exchange: this forward is that recompute (fixed_routing = the first pass's routing):
  // it takes the kept results instead of exchanging again, so it makes no collective call. The
  // same input gives the same rows on every rank, so the result is bit for bit the same.
  bool keep_exchange = false;
  bool reuse_exchange = false;
  // True: on a GPU, the forward does not wait for the device; the statistics of its result
  // (losses, load, counts, dropped, capacity) are filled by finish_stats(). The CPU fills them at
  // once either way.
  bool defer_stats = false;
  // False: nobody reads this forward's statistics (a decode step), so a GPU forward does not copy
  // them to the host; they read as zeros until a forward that wants them.
  bool want_stats = true;
  // Where the GPU layer writes y ([T, d] bf16 on the layer's GPU) instead of a buffer of its own,
  // saving the caller a copy; MoEOutput::y is then this tensor. The CPU layer ignores it.
  Tensor out;
};

struct MoEOutput {
  Tensor y;             // [T,d]
  double aux_loss = 0;  // load-balancing loss, unweighted (before dropping)
  double z_loss = 0;    // router z-loss, unweighted
  double weighted_loss =
      0;  // aux_loss_coef * aux_loss + z_loss_coef * z_loss; backward includes it
  std::vector<int64_t> load;    // [E] routes per expert before dropping
  std::vector<int64_t> counts;  // [E] routes per expert after dropping
  // [E] the combine weights of each expert's routes summed, as if nothing were dropped (the
  // CPU layer measures it; empty on a GPU): what pruning by gate mass ranks experts by.
  std::vector<double> gate_mass;
  int64_t num_dropped = 0;
  int64_t capacity = 0;  // C (dropless: the largest load)
};

// The layer's tensors; gradients use the same struct (selection_bias gets none: it is updated by
// a load rule, not by gradient). Undefined tensors are the ones the config does not use.
struct MoEWeights {
  Tensor router, selection_bias, w1, w2;
  Tensor residual_w1, residual_w2, residual_coef;
  Tensor shared_w1, shared_w2, shared_gate;
};

struct MoEGradients {
  Tensor dx;  // [T,d]
  MoEWeights weights;
};

class MoELayer {
 public:
  // Validates the config; dtype is F32 or F64. Weights are zero until init_weights or set by hand.
  // expert_group (expert parallelism, docs/parallelism.md): this rank holds experts
  // [rank * E/ep, (rank + 1) * E/ep) of the group's ep = size() ranks, so w1 and w2 (and their
  // gradients) have E/ep rows, and forward and backward exchange tokens with the group's other
  // ranks, which must make the same calls. Null or size 1: every expert is here.
  explicit MoELayer(const MoEConfig& config, DType dtype = DType::kF32,
                    dist::Communicator* expert_group = nullptr);
  ~MoELayer();
  MoELayer(const MoELayer&) = delete;
  MoELayer& operator=(const MoELayer&) = delete;

  const MoEConfig& config() const;
  DType dtype() const;
  MoEWeights& weights();
  // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) from Philox(seed); selection_bias stays zero.
  // Marks every weight written (Tensor::mark_written). Code that edits weights() in place must do
  // the same, or the GPU path keeps its device copy (moe_layer_dispatch.h).
  void init_weights(uint64_t seed);
  // The experts this rank holds: [first_local_expert(), + num_local_experts()).
  int64_t num_local_experts() const;
  int64_t first_local_expert() const;
  // The token exchanges with the expert group so far (zeros without one), on either device.
  moe::ExchangeStats exchange_stats() const;
  // Device bytes the GPU path keeps for backward between calls (0 on the CPU).
  size_t device_kept_bytes() const;
  // The most bytes a forward of `tokens` tokens on `device` with these options (keeping for
  // backward) puts in MoEForwardOptions::lent_rows; 0 when it never uses lent memory (the CPU,
  // expert parallelism, a layout with no useful bound).
  size_t device_kept_bytes_bound(const Device& device, int64_t tokens,
                                 const MoEForwardOptions& options);
  // Duplicate Token Dropping (docs/parallelism.md): the ranks of tp_group run this layer on the
  // same tokens, so each sends only its share of the expert rows through the all-to-alls and an
  // all-gather over tp_group completes them (moe/expert_exchange.h). Same results; null: off. On
  // the GPU over device_group, tp_group's ranks as a GPU communicator (required before a GPU
  // forward).
  void drop_duplicate_tokens(dist::Communicator* tp_group,
                             dist::DeviceGroup* device_group = nullptr);
  // Expert tensor-slicing (docs/parallelism.md): the layer's config holds this rank's F/tp of each
  // expert's hidden width and its weights that slice; the ranks of tp_group, which run the layer
  // on the same tokens, sum their experts' outputs, and in backward their input gradients, over
  // tp_group; on the GPU over device_group, its ranks as a GPU communicator (required before a GPU
  // forward). Null: off.
  void slice_experts(dist::Communicator* tp_group, dist::DeviceGroup* device_group = nullptr);
  // Every defined weight with its name ("router.weight", "experts.w1", ...).
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;

  // x [T,d] of the layer's dtype. The result stays valid until the next forward.
  const MoEOutput& forward(const Tensor& x, const MoEForwardOptions& options);
  // dy [T,d]: gradients of the last forward with respect to x and every weight, with the
  // weighted aux and z losses included (their upstream gradient is 1). Valid until the next call.
  // In model mode (bind_device_expert_buffers) the expert gradients are added into the bound
  // buffers, or written over them when add_bound_expert_grads is false (the first write of a
  // step, docs/gpu-model.md §Gradients without zero_grad).
  // dx (optional, [T,d] like dy): where the caller wants the input gradient. The GPU layer writes
  // it there when it fits (bf16 on its device), and the result's dx is then that tensor: no
  // buffer of the layer's own stays allocated until the next backward.
  const MoEGradients& backward(const Tensor& dy, bool add_bound_expert_grads = true,
                               const Tensor& dx = Tensor());
  // The routing the last forward used.
  const MoERouting& routing() const;
  // Fills the statistics of the last forward's result (the object forward returned) when that
  // forward deferred them, waiting for the device; a no-op otherwise.
  void finish_stats();

  // Model mode of the GPU path (docs/gpu-model.md): compute the experts with the model's bf16
  // copy w1 [E,F1,d], w2 [E,d,F] instead of a converted copy of weights(), and add their
  // gradients into dw1, dw2 (the model's fp32 or bf16 gradient views); backward() then returns
  // undefined expert gradients. The other weights stay as weights() says. `device` is the GPU.
  void bind_device_expert_buffers(const Device& device, const Tensor& w1, const Tensor& w2,
                                  const Tensor& dw1, const Tensor& dw2);
  bool has_device_expert_buffers() const;
  // Expert parallelism on the GPU: the expert group's ranks as a GPU communicator (the same ranks
  // in the same order as expert_group), over which the GPU path exchanges tokens. Must outlive
  // the layer; required before a GPU forward of a layer built with an expert group.
  void set_device_expert_group(dist::DeviceGroup* group);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex
