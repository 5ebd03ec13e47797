// The decoder-only MoE transformer (docs/architecture.md §Model family) on the CPU: embedding
// (+ learned positions), pre-norm blocks with dense or MoE FFNs, final norm, LM head (tied or
// not), cross-entropy.
// Parameters and gradients live in two ParamBuffers of the same layout, under Hugging Face names.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "model/block.h"
#include "model/gradient_sink.h"
#include "model/lent_memory.h"
#include "model/lm_head.h"
#include "model/model_config.h"
#include "model/tensor_parallel.h"
#include "ops/sample.h"
#include "ops/step_graph.h"

namespace moex::model {

struct ForwardOptions {
  bool training = false;
  // Keep activations for backward(). The LM head's gradients are made in this forward, chunk by
  // chunk while its logits exist (model/lm_head.h): a forward for backward already adds the head
  // weight's gradient, so follow it with backward(). False (evaluation): nothing is kept.
  bool for_backward = false;
  bool checkpoint_activations = false;  // keep block inputs only; recompute in backward
  // With checkpoint_activations under expert parallelism: the recompute reuses the first pass's
  // all-to-all results instead of exchanging again (CAC, docs/parallelism.md; CPU only).
  bool cac = false;
  uint64_t seed = 0;  // router noise (jitter, RSample, Gumbel, RTS) of this step
  uint64_t step = 0;  // RNG offset: a fresh stream per step and layer
  // Weight of this forward's loss (cross-entropy and MoE aux/z terms) in the objective that
  // backward differentiates: 1/grad_accum when micro-batches are averaged.
  double loss_scale = 1.0;
  // >= 0: the LM head's objective (cross-entropy, the KD term) is scaled by this instead of
  // loss_scale. With a loss mask the trainer weighs each micro-batch's head loss by its share of
  // the step's trained targets, and its MoE losses by 1 / micro-batches, as without one.
  double head_loss_scale = -1.0;
  // Knowledge distillation (docs/distill.md): the teacher's side of a KD term that joins the loss
  // and its gradient; it must hold this batch's rows. Null: plain LM loss.
  const SoftTargets* soft_targets = nullptr;
};

struct LossResult {
  double loss = 0;          // mean next-token cross-entropy over counted positions
  double aux_loss = 0;      // sum over MoE layers of the unweighted load-balancing losses
  double z_loss = 0;        // sum over MoE layers of the unweighted z-losses
  double weighted_aux = 0;  // what the aux and z terms add to the training objective
  double kd_loss = 0;       // mean tau^2 KL(teacher || student) over counted positions
  double weighted_kd = 0;   // what the KD term adds to the objective (soft_targets->weight * kd)
  int64_t num_targets = 0;  // positions that counted
};

// Keys and values of every layer: [L] tensors of [B, capacity, Hkv, Dh] on the model's device.
struct KVCache {
  int64_t batch = 0, capacity = 0, length = 0;
  std::vector<Tensor> k, v;
};

// How a model stores its state: the weights the optimizer updates (master) and the gradients.
// For training, kF32 each, or kBF16 on a GPU in any layout (optimizer.master_dtype,
// optimizer.grads_dtype; docs/gpu-model.md §bf16 master weights and §bf16 gradients,
// docs/parallelism.md §bf16 state over ranks). With a bf16 master the kernels read the master
// itself: there is no copy.
struct ModelState {
  DType master = DType::kF32;
  DType grads = DType::kF32;
  // false: a model for inference (evaluation, generation, serving, a distillation teacher). It
  // holds no gradient buffer; forward(for_backward) and backward() are refused.
  bool trainable = true;
  // An inference model on `device`: on a GPU its bf16 weights alone (2 bytes a parameter, against
  // 10 with an fp32 master, its bf16 copy and fp32 gradients), under any layout; on the CPU its
  // fp32 weights.
  static ModelState inference(const Device& device) {
    return {device.is_cuda() ? DType::kBF16 : DType::kF32, DType::kF32, false};
  }
  // ZeRO stage 2 (docs/parallelism.md §ZeRO): no whole gradient buffer. The model holds the
  // gradients of the embedding (and learned positions), of the final norm and head, and one window
  // the size of the largest block, which every block's backward reuses; each bucket's gradients go
  // to the GradientSink as soon as they are made (model/gradient_sink.h), fp32 or bf16.
  bool stream_gradients = false;
};

class Model {
 public:
  // Parameters, gradients and activations live on `device`; on CUDA the kernels compute in bf16
  // from a copy of the fp32 master weights (docs/architecture.md §Numerics).
  // expert_group (expert parallelism, docs/parallelism.md): every MoE layer holds only this
  // rank's E/ep experts, and forward/backward exchange tokens with the group's other ranks, which
  // run the same calls on their own batches. Null: every expert is here.
  // tp (tensor parallelism, model/tensor_parallel.h): attention heads, dense MLP widths and
  // vocabulary rows are split over tp.group, whose ranks run the same calls on the same batch.
  // No group: every weight is here.
  // offload (ZeRO-Offload, docs/parallelism.md): on a GPU the fp32 master weights live in pinned
  // host memory (and so do the optimizer's moments, made beside them); the GPU holds the bf16
  // copy the kernels read and the gradients. A bf16 master stays on the GPU (the optimizer keeps
  // only the moments on the host).
  explicit Model(const ModelConfig& config, Device device = Device::cpu(),
                 dist::Communicator* expert_group = nullptr, const TensorParallel& tp = {},
                 bool offload = false, const ModelState& state = {});
  // Blocks and layers hold references into config_ and views into the parameter buffers, so a
  // Model stays where it was built (hold it by unique_ptr to pass it around).
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = delete;
  Model& operator=(Model&&) = delete;
  const ModelConfig& config() const { return config_; }
  Device device() const { return device_; }
  bool trainable() const { return trainable_; }
  // The master weights (what loading, saving and the optimizer use): fp32, or bf16 with
  // ModelState::master (then they are also what the kernels read). On a GPU model, code that
  // writes them calls weights_changed() after, so the bf16 copy follows. They are on the model's
  // device, or on the host under offload (master_on_host()). Loaders and savers go through
  // host_params(), which is fp32 either way.
  ParamBuffer& params() { return master_; }
  const ParamBuffer& params() const { return master_; }
  // The gradients; entries no backward wrote since zero_grad() read as zeros (they are zeroed
  // here, model/gradient_writes.h). A trainable model's only, without streamed gradients.
  ParamBuffer& grads();
  // The gradient buckets in buffer order, as entry ranges: the embedding (and positions), each
  // block, the final norm (and head). With streamed gradients (ModelState::stream_gradients) the
  // sink gets each bucket's gradients every micro-batch, and backward() needs one. A model that
  // does not stream hands each bucket to a sink, if it has one, once per step: the blocks' in
  // the backward marked last_of_step, as each block's backward ends, and the edges' in
  // finish_gradients() (parallel.overlap_comm, docs/parallelism.md §Overlapped gradient
  // reductions).
  const std::vector<EntryRange>& gradient_buckets() const { return buckets_; }
  void set_gradient_sink(GradientSink* sink) { sink_ = sink; }
  bool streams_gradients() const { return streams_; }
  // Bytes of gradient storage the model holds (the whole buffer, or the streamed buckets').
  int64_t gradient_bytes() const;
  bool master_on_host() const { return master_.flat().device().is_cpu(); }
  // An inference model's fp32 routers beside its bf16 weights (host_params merges them in).
  bool keeps_fp32_copies() const { return !own_fp32_views_.empty(); }
  // What the kernels read: params() itself on the CPU and for a bf16 master, else its bf16 copy
  // on CUDA.
  const ParamBuffer& compute_params() const { return compute_ ? *compute_ : master_; }
  // Marks the master weights written and refreshes the compute copy from them.
  void weights_changed();
  // Copies every master weight from a model of the same config on any device.
  void copy_weights_from(const Model& other);
  // The master weights on the host in fp32: the buffer itself on the CPU, a copy for a GPU model
  // (widened from a bf16 master, exactly). Loaders fill it and hand it back to
  // store_host_params(), which copies it to the device (a no-op on the CPU; rounded to nearest
  // into a bf16 master) and calls weights_changed().
  ParamBuffer host_params() const;
  void store_host_params(const ParamBuffer& host);

  // Draws every weight; returns them as drawn, fp32 on the host (the buffer itself on the CPU),
  // before a bf16 master rounds them. keep_drawn false: the weights are drawn one gradient bucket
  // (embedding, block, head) at a time through a host window the size of the largest and copied
  // over, so the host never holds the whole model (4 bytes a parameter), and nothing is returned;
  // the weights are the same.
  ParamBuffer init_weights(uint64_t seed, bool keep_drawn = true);
  // Starts a step's gradients: the next backward writes each entry over its stale contents
  // instead of adding (no memset; model/gradient_writes.h). A no-op for an inference model.
  void zero_grad();
  // Under tensor parallelism: sums over the tp group the gradients of which each rank holds only
  // its heads' part (the q/k norm weights, shared by all heads). With a sink, hands it the
  // buckets not handed yet this step (the edges; the blocks too if no backward was marked
  // last_of_step), in the order backward does. Call it once after the last backward of an
  // optimizer step, before the data-parallel reduction. A no-op otherwise.
  void finish_gradients();

  // A forward that keeps every activation, on a GPU with a whole gradient buffer, lends each
  // block the gradient memory of blocks below it, where this step has written nothing yet, for
  // two of its kept activations and its MoE layer's kept expert rows (docs/gpu-model.md §Kept
  // rows in gradient memory); the alignment padding is zeroed again as backward ends each block.
  // The same results either way. On unless MOEX_KEPT_ROWS_IN_GRADS=0; off: the arena and the
  // MoE layers' own buffers hold them.
  void set_lend_gradient_memory(bool on) { lend_grads_ = on; }
  // The gradient memory each block was lent in the last forward, as elements of
  // grads().flat() ([L]; empty regions: none).
  const std::vector<LentRegion>& lent_regions() const { return lent_regions_; }
  int64_t lent_gradient_bytes() const;  // their bytes

  // ids, targets [B, T] on the host; targets of -100 are ignored. Saves activations for backward.
  LossResult forward(const int32_t* ids, const int32_t* targets, int64_t batch, int64_t seq_len,
                     const ForwardOptions& options);
  // Accumulates into grads(): d(loss + weighted aux) / d(params), times the forward's loss_scale.
  // last_of_step: no backward follows before finish_gradients(), so a model with a sink that does
  // not stream hands each block's gradients over as soon as they are final (gradient_buckets).
  void backward(bool last_of_step = true);

  // Logits [B, T, V] (host, fp32) without saving anything (evaluation). Under tensor parallelism
  // every tp rank calls it with the same ids and gets the whole rows.
  void logits(const int32_t* ids, int64_t batch, int64_t seq_len, float* out);
  // The final-normed hidden states [B*T, d] (compute dtype, on the device) without saving
  // anything: a teacher's side of the KD loss. The tensor lives in this model's arena until its
  // next forward.
  Tensor final_hidden(const int32_t* ids, int64_t batch, int64_t seq_len);
  // The LM head weight [V, d] the kernels read (the embedding when tied).
  const Tensor& lm_head_weight() const { return head_.w; }
  // Decoding: appends new_len tokens per sequence to the cache and writes the logits of the
  // last new token of each sequence, [B, V] (host, fp32). Under tensor parallelism the cache
  // holds this rank's kv heads, every tp rank calls forward_cached with the same ids, and each
  // gets the whole logits rows.
  KVCache make_cache(int64_t batch, int64_t capacity) const;
  void forward_cached(const int32_t* ids, int64_t batch, int64_t new_len, KVCache& cache,
                      float* last_logits);

  // Serving: a pool of num_blocks blocks of block_size positions for every layer.
  PagedKV make_paged_kv(int64_t num_blocks, int64_t block_size) const;
  // The bytes make_paged_kv would allocate, every layer's keys and values (a double: a size
  // asked for by mistake may not fit in 64 bits), to check a pool before allocating any of it.
  double paged_kv_bytes(int64_t num_blocks, int64_t block_size) const;
  // Several sequences at once, each at its own position: ids holds their new tokens back to back
  // (seqs in order); keys and values go to each sequence's blocks, and each attends over its own
  // positions only. Writes the logits after each sequence's last new token, [S, V] (host, fp32),
  // when last_logits is not null, and the next token of each sequence from those logits, [S]
  // (computed on the device by ops::sample_rows; only S ids come back), when next is not null:
  // drawn with sampling[s] ([S]; null: greedy, the argmax). MoE routes are never dropped, so a
  // sequence's logits do not depend on the others in the batch. A slice with all_logits has the
  // logits after each of its new tokens, in order ([L, V] in all, L = the rows asked for); `next`
  // must then be null (the caller samples them).
  // With kv.table_width > 0 on a GPU, a step of one new token per sequence replays a CUDA graph
  // captured for its batch size, sampling included (docs/gpu-model.md §Decoding); not under
  // tensor parallelism, where only tp rank 0 calls this (and launch_paged) while the other ranks
  // are inside mirror_paged_steps.
  void forward_paged(const int32_t* ids, const std::vector<SequenceSlice>& seqs, PagedKV& kv,
                     float* last_logits, int32_t* next = nullptr,
                     const ops::SampleParams* sampling = nullptr);
  // The same step in two halves, so the host can prepare and launch a step while the device still
  // runs the one before (docs/gpu-model.md §Decoding): launch_paged queues the step and returns;
  // collect_paged waits for the oldest uncollected step and writes its next tokens [S]. At most
  // two steps are uncollected at once. With ids_follow_last, every row is one decode token of the
  // same sequences, in the same order, as the last launched step, and takes that step's sampled
  // token as its id on the device (`ids` is not read): a decode step needs no host round trip.
  void launch_paged(const int32_t* ids, const std::vector<SequenceSlice>& seqs, PagedKV& kv,
                    const ops::SampleParams* sampling, bool ids_follow_last = false);
  void collect_paged(int32_t* next);
  // Serving under tensor parallelism (docs/parallelism.md §Serving under tensor parallelism):
  // tp rank 0 runs the scheduler and sends every step it launches to the group's other ranks;
  // they call mirror_paged_steps, which launches each step on this rank's parts of the model (its
  // own pool `kv`, sized like rank 0's) until rank 0 calls end_mirrored_steps. A step that fails
  // on any rank after it was sent ends the whole job (the others would wait in its collectives).
  void mirror_paged_steps(PagedKV& kv);
  void end_mirrored_steps();
  int64_t paged_steps_in_flight() const { return static_cast<int64_t>(in_flight_.size()); }
  // Host milliseconds spent so far in launch_paged and waiting inside collect_paged (benchmarks:
  // where a step's wall time goes besides the device).
  struct PagedHostTimes {
    double launch_ms = 0, wait_ms = 0;
    int64_t launches = 0;
  };
  PagedHostTimes paged_host_times() const { return host_times_; }
  // Decode steps that replayed a captured graph, and graphs captured, so far.
  int64_t paged_graph_replays() const;
  int64_t paged_graph_captures() const;
  // Benchmarks: the device time of one captured decode step of num_seqs sequences, its graph
  // replayed `iters` times back to back (its last inputs again: the same KV slots are rewritten
  // with the same values); 0 when no graph is ready for that batch.
  double paged_graph_ms(int64_t num_seqs, int iters);

  // The expert group the model was built with (null: all experts here), and whether buffer entry
  // `index` holds experts (experts.*: this rank's E/ep rows of the global tensor under ep).
  dist::Communicator* expert_group() const { return expert_group_; }
  // Expert parallelism on the GPU: the expert group's ranks as a GPU communicator (NCCL), which
  // every MoE layer exchanges its tokens over. Must outlive the model; set before the first step.
  void set_device_expert_group(dist::DeviceGroup* group);
  bool is_expert_param(int index) const;
  // Entries no gradient reaches and a rule updates instead (the MoE selection biases, moved by
  // train/load_balance.h); the optimizer's steps leave them as they are.
  const std::vector<int>& rule_params() const { return rule_params_; }
  // The MoE routers' weights (the MoE layers read them in fp32).
  const std::vector<int>& router_params() const { return router_params_; }
  // A model with bf16 weights whose fp32 master lives elsewhere (a sharded ZeRO master): the fp32
  // values of entries the MoE layers read in fp32 (routers, selection biases), which they then
  // read instead of the bf16 ones (by entry index; the tensors' owner keeps them current).
  void set_fp32_weights(const std::map<int, Tensor>& weights);
  // Entry index's fp32 values given by set_fp32_weights, or an undefined tensor.
  const Tensor& fp32_weight(int index) const;
  // The tensor-parallel group (inactive when every weight is here). Buffer entries with
  // params().split_dim(i) >= 0 hold this rank's part of the named tensor.
  const TensorParallel& tensor_parallel() const { return tp_; }
  // Some weights are held in parts over ranks (tensor parallelism, or experts over several ranks):
  // gradient norms and checkpoints then take the groups' collectives.
  bool split_over_ranks() const {
    return tp_.active() || (expert_group_ != nullptr && expert_group_->size() > 1);
  }

  // Per MoE layer statistics of the last forward (layer index, stats).
  std::vector<std::pair<int, MoEStats>> moe_stats() const;
  // The token exchanges of every MoE layer so far, summed (zeros without an expert group).
  moe::ExchangeStats exchange_stats() const;
  // Bytes of the activation arena at its fullest so far.
  size_t activation_bytes() const { return arena_.high_water(); }
  // Device bytes the GPU MoE layers keep for backward in buffers of their own (0 on the CPU).
  size_t moe_kept_bytes() const;

 private:
  // The index tensors and sampling parameters of one serving step (model/paged_kv.h), checked on
  // the host and uploaded to the model's device once.
  PagedRows paged_rows(const int32_t* ids, const std::vector<SequenceSlice>& seqs,
                       const PagedKV& kv, const ops::SampleParams* sampling);
  // The body of forward_paged after the upload: logits [S, V] f32 and the next tokens [S] i32 in
  // the arena.
  void paged_forward_body(const PagedRows& rows, PagedKV& kv, Tensor& logits, Tensor& next);
  struct PagedGraph;
  // Runs the step directly, then captures it into g (g.failed, with one warning, if it cannot
  // be captured).
  void capture_paged_graph(PagedGraph& g, const PagedRows& rows, PagedKV& kv);
  void bind_all(const ParamViews& views);
  // The views of this model's own buffers (gradient views undefined for an inference model).
  ParamViews own_views();
  // Draws gradient bucket `bucket`'s weights (init_weights) into the bound views.
  void draw_bucket(size_t bucket, uint64_t seed);
  // x [B*T, d] = token embeddings (+ learned positions from start_pos).
  void embed(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t start_pos,
             const Tensor& x);
  // x [N, d] = the token embeddings of ids [N] (i32, on the host or checked on the device); under
  // tp each rank looks up its vocabulary rows (zeros for other ids) and the group sums them.
  void embed_ids(const Tensor& ids, const Tensor& x);
  // Under tp: checks ids_ and keeps the positions of this rank's vocabulary rows among them and
  // those rows, which backward adds the gradient of (local_rows_, local_ids_).
  void keep_local_vocab_rows();
  // out [rows, V] (host) = logits [rows, V or V/tp] (f32, the model's device); under tensor
  // parallelism each rank's vocabulary slice, gathered over the group. Every tp rank calls it.
  void gather_logits(const Tensor& logits, float* out);
  // Under tensor parallelism: [rows, V] f32 in the arena = every rank's slice `local` [rows, V/tp]
  // side by side in rank order. Every tp rank calls it.
  Tensor whole_logits(const Tensor& local);
  // launch_paged once the step's rows are checked and uploaded.
  void queue_paged_step(const PagedRows& rows, PagedKV& kv, bool decode, bool ids_follow_last);
  Tensor host_ids(const int32_t* ids, int64_t n) const;

  ModelConfig config_;
  Device device_;
  bool trainable_ = true;
  dist::Communicator* expert_group_ = nullptr;
  TensorParallel tp_;
  std::vector<bool> expert_param_;  // [buffer entries] is_expert_param
  std::vector<int> rule_params_, router_params_;
  // set_fp32_weights: the tensors, and the master weights' views with those entries rebound to
  // them (what the modules' master views are then).
  std::map<int, Tensor> fp32_weights_;
  ParamBuffer master_view_;
  // An inference model with bf16 weights keeps its routers and selection biases in fp32 itself
  // (the design's fp32 router; a few numbers a layer): own_fp32_ [R] on the device, and per entry
  // index its [numel] view. Loads and copies fill it; host_params() reads it.
  Tensor own_fp32_;
  std::map<int, Tensor> own_fp32_views_;
  void keep_fp32_routers();
  std::vector<int> partial_grads_;  // entries finish_gradients sums over tp
  ParamBuffer master_, grads_;
  std::vector<Tensor>
      grad_storage_;  // what backs grads_: its flat buffer, or the streamed buckets'
  // Streamed gradients: the buckets (embedding, each block, head), the sink.
  bool streams_ = false;
  std::vector<EntryRange> buckets_;
  GradientSink* sink_ = nullptr;
  bool blocks_handed_ = false;  // a sink that does not stream has the blocks' of this step
  // Backs the entries of streamed gradients: each edge bucket with its own storage, every block
  // with one shared window.
  void allocate_streamed_grads(DType dtype);
  // Completes bucket b's gradients (zeroes what nothing wrote, sums tp-partial entries) and hands
  // them to the sink.
  void hand_over(int bucket);
  // Hands every block's bucket to the sink, the last block first.
  void hand_over_blocks();
  // Sums entries [first, last]'s tp-partial gradients over the tp group.
  void sum_partial_grads(int first, int last);
  GradientWrites writes_{grads_};  // which gradient entries hold this step's values
  // set_lend_gradient_memory: block i's lent memory in this forward ([L], undefined: none), a
  // view of the gradient buffer; the regions it covers.
  std::vector<Tensor> lent_rows(int64_t n, const StepOptions& step);
  bool lend_grads_ = true;
  std::vector<LentRegion> lent_regions_;
  Shape paged_kv_shape(int64_t num_blocks, int64_t block_size) const;  // one layer's keys
  // Zeroes bucket b's alignment padding where this step's lent regions covered it (the norm and
  // the reductions read it).
  void zero_lent_padding(int bucket);
  std::unique_ptr<ParamBuffer> compute_;  // bf16 copy of an fp32 master on CUDA; else null
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<NormLayer> final_norm_;
  int embed_idx_ = -1, pos_idx_ = -1, head_idx_ = -1;
  Param embed_, pos_, head_;
  Arena arena_;  // this step's activations (growable: the first step of a shape plans it)
  // saved by forward
  int64_t batch_ = 0, seq_len_ = 0;
  Tensor ids_, pos_ids_;  // [N] i32, host
  // Under tp: the positions [M] among ids_ of this rank's vocabulary rows, and those ids minus
  // the rank's first row [M] (i32, host).
  Tensor local_rows_, local_ids_;
  Tensor dhidden_;  // [N, d]: the LM head's gradient, made in forward
  // Serving steps: the host staging of the step's indices and their device copy (i32, grown as
  // needed), the next-token download, and one captured decode step per batch size.
  Tensor step_host_, step_dev_;
  std::unique_ptr<ops::StreamMark> upload_done_;  // after the last upload from step_host_
  // Launched steps whose tokens are not read yet, oldest first: the host slot [S] their tokens
  // are copied into (two slots, alternating) and a mark after that copy.
  struct InFlightStep {
    Tensor next_host;
    std::shared_ptr<ops::StreamMark> copied;
  };
  std::deque<InFlightStep> in_flight_;
  Tensor next_host_[2];
  std::shared_ptr<ops::StreamMark> next_marks_[2];
  int next_slot_ = 0;
  Tensor last_logits_;  // the last launched step's logits [S, V] f32 (device)
  PagedHostTimes host_times_;
  Tensor sampled_;  // [>= S] i32 on the device: the last launched step's tokens
  std::map<int64_t, std::unique_ptr<PagedGraph>> paged_graphs_;
};

}  // namespace moex::model
