// AdamW over the model's parameter buffer. Weight decay applies to matrices (>= 2 dims) only, as
// is usual for transformers. Without ZeRO, exp_avg and exp_avg_sq share the buffer's layout and
// live on its device, and one fused pass updates every tensor (ops/adamw.h); on a GPU model it
// also rewrites the bf16 working copy the kernels compute with. The moments are fp32, or bf16 with
// config.moments_dtype (stochastic rounding, docs/architecture.md §Numerics); gather_moment and
// load_moment speak fp32 either way, so checkpoints do not depend on it.
//
// ZeRO stages 1 and 2 (docs/parallelism.md): each rank keeps the moments of its shard only
// (non-expert parameters sharded over dp, experts over edp, train/zero_partition.h), steps that
// shard in tiles through the same op on views of the buffers, and all-gathers the updated
// weights. The update is element-wise, so sharding changes no number (but stage 2 sums bf16
// gradients in fp32, where stages 0 and 1 sum them in bf16); the gradient norm is the sum of the
// shards' squares over the group. Under stage 2 the optimizer is the model's gradient
// sink: it reduce-scatters each bucket the model streams (ModelState::stream_gradients) into the
// gradient sums of its shard, and the model holds no whole gradient buffer.
#pragma once

#include <array>
#include <memory>
#include <vector>

#include "core/arena.h"
#include "dist/communicator.h"
#include "model/gradient_sink.h"
#include "ops/adamw.h"
#include "train/train_config.h"
#include "train/zero_partition.h"

namespace moex::model {
class Model;
}

namespace moex::train {

struct ZeroConfig {
  int64_t stage = 0;  // 1: moments sharded; 2: gradients streamed and reduce-scattered too
  dist::Communicator* dp = nullptr;   // shards the non-expert parameters
  dist::Communicator* edp = nullptr;  // shards this rank's experts
  // The same groups on the GPU (a GPU model whose group has several ranks needs them).
  dist::DeviceGroup* gpu_dp = nullptr;
  dist::DeviceGroup* gpu_edp = nullptr;
  int64_t tile_elements = int64_t{1} << 24;  // bound of one step piece and of one collective
  // The fp32 master weights are sharded too: the optimizer keeps its shards of them, and steps the
  // model's weights (bf16 on a GPU: rounded to nearest) from those (parallel.shard_master, GPU
  // ranks). A CPU model's fp32 weights are what it computes with, so there it only adds a copy
  // (tests).
  bool shard_master = false;
  // ZeRO-Offload (a GPU model): the moments, and a sharded master, on the host, the step on the
  // CPU. Without shard_master the model keeps its whole fp32 master in pinned host memory, or a
  // bf16 master on the GPU (stepped on the host a shard piece at a time).
  bool offload = false;
  // Stage 2: each bucket's reduce-scatters run beside the next block's backward on GPU ranks
  // (parallel.overlap_comm; ZeroPartition keeps a bucket's staging for it).
  bool overlap_comm = false;
};

class AdamW : public model::GradientSink {
 public:
  // Without ZeRO: every moment of `params` on its device, or with `offload` (ZeRO-Offload of a GPU
  // model) on the host, stepped in tiles of offload_tile elements (parallel.tile_elements; each
  // tile's pinned buffers are what offload adds to the host's memory).
  AdamW(const ParamBuffer& params, const OptimizerConfig& config, bool offload = false,
        int64_t offload_tile = int64_t{1} << 24);
  // ZeRO stage zero.stage (1 or 2) over the model's parameters. Stage 2 needs a model that
  // streams its gradients (ModelState::stream_gradients); the caller makes this optimizer its
  // sink (Model::set_gradient_sink). With zero.shard_master it gives the model the fp32 copies
  // its MoE layers read (Model::set_fp32_weights).
  AdamW(model::Model& model, const OptimizerConfig& config, const ZeroConfig& zero);

  // Clips the global gradient norm to config.grad_clip (if > 0), then updates every parameter.
  // Returns the gradient norm before clipping. `step` is 1-based. working_copy: the bf16 copy of
  // fp32 params on CUDA (null on the CPU and for bf16 params, updated in place with stochastic
  // rounding). Without ZeRO only.
  double step(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
              const ParamBuffer* working_copy = nullptr);
  // The same on a model's master weights, gradients and working copy. Under expert parallelism
  // the norm covers every expert of the expert group (each rank holds E/ep of them), so every
  // rank clips by the same global norm; under ZeRO the gradients of this rank's shards must be
  // summed over their groups (all-reduced, or streamed under stage 2) and the weights are
  // all-gathered afterwards. Every rank of the groups must call it.
  double step(model::Model& model, double lr, int64_t step);

  int64_t zero_stage() const { return zero_.stage; }
  // ZeRO stage 2: adds the group's sums of this rank's shard of the bucket to the shard's
  // gradients (model::GradientSink). step() consumes and clears them.
  void take(int bucket, const Tensor& grads) override;
  // Bytes of gradients this optimizer holds (ZeRO stage 2's shard sums, and with overlap_comm the
  // staging of a bucket once the first has come; 0 otherwise).
  int64_t gradient_bytes() const;

  // A moment (second: exp_avg_sq) on the host in the buffer's layout [total]; under ZeRO the
  // shards are gathered over their groups (every rank must call it).
  Tensor gather_moment(bool second) const;
  // Without ZeRO: the moment as kept ([total] in the buffer's layout, on its device, fp32 or bf16)
  // for writing in place; undefined under ZeRO (gather_moment then).
  Tensor moment_in_place(bool second) const {
    return zero_.stage == 0 ? (second ? exp_avg_sq_ : exp_avg_) : Tensor();
  }
  // Sets a moment from the host [total] in the buffer's layout (this rank's shards under ZeRO).
  void load_moment(bool second, const Tensor& flat);
  // ZeroConfig::shard_master: the master weights gathered over the groups, fp32 on the host
  // [total] (every rank must call it), with the rule-updated entries (which no shard holds);
  // undefined otherwise.
  Tensor gather_master() const;
  // Sets this rank's master shards from fp32 weights [total] in the buffer's layout (the values
  // the model was initialized or loaded with, before rounding); a no-op without a sharded master.
  void load_master(const Tensor& flat);
  bool shards_master() const { return master_.defined(); }

  // Bytes of optimizer state this rank holds: both moments, and a sharded master.
  int64_t state_bytes() const {
    return static_cast<int64_t>(exp_avg_.nbytes() * 2) +
           (master_.defined() ? static_cast<int64_t>(master_.nbytes()) : 0);
  }

  // ZeRO-Offload: the host's milliseconds in the offload steps so far, by phase.
  struct OffloadTimes {
    double norm_ms = 0;    // the gradient norm (reductions on the GPU, read by the host)
    double wait_ms = 0;    // waiting for the tiles' gradient downloads and weight uploads
    double adam_ms = 0;    // the CPU AdamW (without ZeRO with the bf16 cast of the weights)
    // under ZeRO: the weights' all-gather (on the GPUs for bf16 weights; for the model's fp32
    // master on the host, then cast and the whole copy uploaded)
    double gather_ms = 0;
  };
  const OffloadTimes& offload_times() const { return offload_times_; }

 private:
  // The update of step() once the global gradient norm is known.
  void apply(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
             const ParamBuffer* working_copy, double norm);
  ops::AdamWHyper hyper(double lr, int64_t step, double norm) const;
  double zero_step(model::Model& model, double lr, int64_t step);
  // Under ZeRO: the global gradient norm from this rank's shards of grads [total], summed over the
  // groups.
  double zero_grad_norm(const Tensor& grads) const;
  // ZeRO-Offload: master weights and moments on the host, gradients and the bf16 copy on the GPU.
  // Tile by tile: gradients down, the CPU Adam, the updated weights up as bf16. Under ZeRO the
  // tiles are this rank's shard pieces; the model's fp32 master is all-gathered over the groups
  // on the host before the whole bf16 copy goes up, bf16 weights (a sharded master's, or a bf16
  // master's) on the GPUs. A bf16 master stays on the GPU: each tile's weights come down with its
  // gradients and go back up stepped.
  double offload_step(model::Model& model, double lr, int64_t step);

  OptimizerConfig config_;
  ZeroConfig zero_;
  // Without ZeRO: [total], the buffer's layout. Under ZeRO: the non-expert shard, then the expert
  // shard [S0 + S1].
  Tensor exp_avg_, exp_avg_sq_;
  std::unique_ptr<ops::AdamWSegments> segments_;  // without ZeRO
  // A range of the flat buffer the optimizer steps at once, where its moments start in exp_avg_
  // and exp_avg_sq_, and its weight-decay segments (offsets within the range).
  struct StepPiece {
    FlatRange range;
    int64_t state = 0;
    const ops::AdamWSegments* segments = nullptr;
  };
  // The gradients of flat elements [lo, hi) of a step piece: of grads [total], or under stage 2 of
  // the shard's sums (grads unused).
  Tensor piece_grads(const StepPiece& piece, const Tensor& grads, int64_t lo, int64_t hi) const;
  // ZeRO stage 2: the gradient sums of this rank's shards, laid out as the moments [S0 + S1] f32,
  // and each gradient bucket's first flat element.
  Tensor grad_shard_;
  std::vector<int64_t> bucket_flat_begin_;
  // The weight-decay segments the step pieces point to (ZeRO's and offload's).
  std::vector<std::unique_ptr<ops::AdamWSegments>> piece_segments_;
  // Under ZeRO, per kind (0 non-expert, 1 expert): the partition and where its shard starts in the
  // moments; and this rank's step pieces of both kinds.
  std::array<std::unique_ptr<ZeroPartition>, 2> partitions_;
  std::array<int64_t, 2> state_offset_{};
  std::vector<StepPiece> zero_pieces_;
  // ZeroConfig::shard_master: this rank's fp32 master shards, laid out as the moments [S0 + S1].
  Tensor master_;
  // And the fp32 values the MoE layers read instead of the model's bf16 ones
  // (Model::set_fp32_weights), on the model's device: the routers [router_elements_], whole on
  // every rank, gathered from the shards after each step, then the selection biases, which are in
  // no shard and for which this copy is the master (the load-balancing rule updates it).
  struct Fp32Entry {
    int index = 0;     // the parameter buffer entry
    int64_t flat = 0;  // its first element in the buffer
    int64_t numel = 0;
    int64_t at = 0;     // its first element in fp32_copy_
    bool rule = false;  // a selection bias (else a router)
  };
  struct RouterCopy {
    int64_t state = 0, at = 0, count = 0;  // master_[state..] -> fp32_copy_[at..], count elements
  };
  Tensor fp32_copy_;
  std::vector<Fp32Entry> fp32_entries_;
  int64_t router_elements_ = 0;
  std::vector<RouterCopy> router_copies_;  // this rank's router elements
  // Lays out fp32_copy_ and gives the model its views.
  void make_fp32_copy(model::Model& model);
  // After a step: the routers from their shards, the model's bf16 biases from the copy.
  void refresh_fp32_copy(model::Model& model);
  // The part of a state buffer (a moment, master_ or grad_shard_) that holds kind's shard.
  Tensor shard_of(const Tensor& state, int kind) const;
  // A state buffer in the parameter buffer's layout, fp32 on the host [total] (shards gathered
  // over the groups under ZeRO).
  Tensor gather_state(const Tensor& state) const;
  // Sets a state buffer from fp32 [total] in the parameter buffer's layout.
  void load_state(Tensor& state, const Tensor& flat);
  int64_t flat_size_ = 0;  // elements of the parameter buffer
  // Under ZeRO with tensor parallelism: the flat ranges of tensor-parallel parts, whose squares
  // the gradient norm also sums over the tp group (every other element is the same on each tp
  // rank), and that group.
  std::vector<FlatRange> tp_split_ranges_;
  dist::Communicator* tp_group_ = nullptr;
  // Offload: the tiles of the flat buffer (under ZeRO this rank's step pieces), and two pinned
  // host buffers each for a tile's gradients (the gradients' dtype) and weights (bf16), so the
  // copies of one tile run while the CPU steps the other.
  std::vector<StepPiece> offload_tiles_;
  int64_t offload_tile_ = int64_t{1} << 24;  // without ZeRO (under ZeRO the step pieces)
  std::array<Tensor, 2> grad_tiles_, weight_tiles_;
  OffloadTimes offload_times_;
};

}  // namespace moex::train
