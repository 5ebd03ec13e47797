// The FFN of a block: a dense MLP (SwiGLU: gate_proj and up_proj stored back to back and used as
// one fused [2F, d] matrix; GELU: up_proj) or an MoE layer whose weights are views into the model's
// parameter buffer. HF names under prefix = "model.layers.i.mlp":
//   dense:  gate_proj.weight [F,d], up_proj.weight [F,d], down_proj.weight [d,F]
//   MoE:    gate.weight [E,d], gate.e_score_correction_bias [E], experts.gate_up_proj [E,2F,d]
//           (GELU: experts.up_proj [E,F,d]), experts.down_proj [E,d,F]; PR-MoE residual_mlp.*,
//           residual_coef.weight [2,d]; shared_expert.{gate,up,down}_proj.weight,
//           shared_expert_gate.weight [1,d]
#pragma once

#include <memory>
#include <vector>

#include "model/model_config.h"
#include "model/module.h"
#include "model/tensor_parallel.h"
#include "moe/moe_layer.h"

namespace moex::model {

// How one forward pass runs: training mode, the router's RNG stream, and the weight of the MoE
// aux/z losses in the objective that backward differentiates (1/grad_accum under accumulation).
struct StepOptions {
  bool training = false;
  uint64_t seed = 0;
  uint64_t offset = 0;
  double loss_scale = 1.0;
  bool drop_tokens = true;  // MoEForwardOptions::drop_tokens
  // A checkpointed block under CAC: its first pass keeps the MoE layer's all-to-all results and
  // the recompute (hold_routing) reuses them (MoEForwardOptions::keep_exchange, reuse_exchange).
  bool cac = false;
  bool stats = true;  // MoEForwardOptions::want_stats
  // A forward that saves: memory lent for what it keeps (the model lends gradient memory,
  // docs/gpu-model.md §Kept rows in gradient memory): the block takes x1 and h2 from its front,
  // the MoE layer its rows from the rest (MoEForwardOptions::lent_rows).
  Tensor lent_rows;
};

// What an MoE block reports after forward (losses, per-expert load and kept counts, drops):
// the MoE layer's own output record.
using MoEStats = MoEOutput;

class FfnLayer {
 public:
  // expert_group (expert parallelism): an MoE FFN holds only this rank's E/ep experts
  // (MoELayer); its experts.* tensors are those rows of the global ones (docs/parallelism.md).
  // tp (tensor parallelism): a dense MLP holds F/tp of its hidden width; an MoE FFN is whole.
  FfnLayer(const ModelConfig& config, const LayerSpec& spec,
           dist::Communicator* expert_group = nullptr, const TensorParallel& tp = {});
  void declare(ParamBuffer& params, const std::string& prefix);
  void bind(const ParamViews& views);
  void init(uint64_t seed, float std, float out_std);

  bool is_moe() const { return moe_ != nullptr; }
  // Expert parallelism on the GPU (MoELayer::set_device_expert_group); a dense FFN ignores it.
  void set_device_expert_group(dist::DeviceGroup* group) {
    if (moe_) moe_->set_device_expert_group(group);
  }
  // Buffer indices of the expert tensors (experts.*), whose first dim is this rank's experts.
  std::vector<int> expert_param_indices() const;
  // The selection bias (updated by the load-balancing rule, never by a gradient), if any.
  std::vector<int> rule_param_indices() const;
  // The router's weight (the MoE layer reads it in fp32), if this is an MoE layer.
  std::vector<int> router_param_indices() const;
  // x [n, d] -> y [n, d]; x must stay alive until backward when `save` (it does: both live in the
  // step arena). For MoE, step.seed/offset feed the router's noise.
  void forward(const Tensor& x, const Tensor& y, Arena& arena, bool save, const StepOptions& step);
  // dx [n, d] written; parameter gradients accumulated (MoE: aux and z losses included).
  void backward(const Tensor& dy, const Tensor& dx, Arena& arena);
  // The last forward's statistics. On a GPU the forward does not wait for them: the first call
  // after it does (so a model reads them after its last layer, not between layers). Zeros after a
  // forward with StepOptions::stats false.
  const MoEStats& stats();
  // The most bytes a saving forward of n tokens on `device` keeps in step.lent_rows (0: a dense
  // FFN, the CPU, or an MoE layer that never uses lent memory).
  size_t kept_bytes_bound(const Device& device, int64_t n, const StepOptions& step);
  // The MoE layer's token exchanges so far (zeros for a dense FFN or without an expert group).
  size_t moe_kept_bytes() const { return moe_ ? moe_->device_kept_bytes() : 0; }
  moe::ExchangeStats exchange_stats() const {
    return moe_ ? moe_->exchange_stats() : moe::ExchangeStats{};
  }
  // Re-run forward with the routing of the previous forward (activation-checkpoint recompute): on
  // the CPU the routing is held and reused; on a GPU it is recomputed, bit for bit the same.
  void hold_routing(bool hold) { hold_routing_ = hold; }

 private:
  Tensor view_of(const ParamBuffer& buffer, int idx, bool first_proj) const;
  // The MoE layer's options for a forward (save: keep for backward), without its output.
  MoEForwardOptions moe_options(bool save, const StepOptions& step) const;
  Param param_of(const ParamViews& views, int idx, bool first_proj) const;  // view_of's Param

  const ModelConfig& config_;
  LayerSpec spec_;
  TensorParallel tp_;         // a dense MLP's split; inactive for an MoE FFN
  TensorParallel expert_tp_;  // the experts' split (expert tensor-slicing); else inactive
  // dense: w1 [F1, d] (SwiGLU gate and up as one matrix), w2 [d, F]
  int w1_idx_ = -1, w2_idx_ = -1;
  Param w1_, w2_;
  Tensor x_, h_;  // saved: x [n,d], h [n,F1] (backward recomputes a [n,F] from h)
  // MoE: indices of each weight in the buffer (-1 when unused), in MoEWeights order. The layer
  // reads views of the master weights (it keeps its own device copy, moe_layer_dispatch.h).
  std::unique_ptr<MoELayer> moe_;
  std::vector<int> moe_idx_;
  std::vector<Param> moe_grads_;  // gradient views, same order (fused views for the MLP parts)
  MoERouting held_;
  bool hold_routing_ = false;
  const MoEStats* stats_ = nullptr;  // the MoE layer's last result (valid until its next forward)
};

}  // namespace moex::model
