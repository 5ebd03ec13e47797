// The MoE layer on one GPU (docs/architecture.md §MoE layer, docs/gpu-moe.md), forward and
// backward, with the options and results of the CPU layer (moe/): fp32 router and losses, bf16
// activations and expert weights, fp32 accumulation and fp32 weight gradients. Stages, each one
// launch on the context's stream:
//   router_input (cast + jitter) -> router SGEMM -> moe_gating (one fused kernel) -> moe_permute ->
//   expert GEMM1 -> activation -> expert GEMM2 -> moe_combine
// Decoding (at most decode_max_tokens tokens, nothing kept for backward) replaces the middle:
//   moe_router_gating (router + gating in one launch; outside training) or the router stages ->
//   moe_decode_experts (two launches) -> moe_combine
// Backward mirrors it: moe_combine_backward (dgates, dout) -> router_backward -> router SGEMMs ->
// expert GEMM dA -> activation backward (which writes a again over dA) -> (dW2, dW1, dXb) ->
// moe_permute_backward. A training forward keeps h and the expert outputs, not a.
//
// Capacity mode: the expert buffer is [E, C, d] and every expert GEMM is one strided-batched cuBLAS
// call over all experts; nothing syncs with the host. Dropless mode needs per-expert row counts on
// the host for cuBLAS: the layer copies them once per forward (one stream sync; not for forwards
// under token_rows_max_rows, which take capacity mode's layout) and then runs
// either cublasGemmGroupedBatchedEx over the packed [T*k, d] rows (kGrouped, exact work),
// GEMMs over [E, max load, d] (kPadded), or one GEMM per expert over the packed rows (kPacked).
// A device-offset grouped GEMM is not written yet.
//
// PR-MoE residual (config.residual) and the shared expert (shared_ffn_size > 0) run as dense MLPs
// over all T rows with the same GEMM wrappers and activation kernels ("one expert over T rows"),
// mixed into y by moe_mix (2-way softmax coefficients / sigmoid gate, fp32), as the CPU layer:
//   y = moe(x) c0 + mlp(x) c1 (c = softmax(x Wc^T)),   y += shared_mlp(x) [sigmoid(x ws^T)].
// Their backward adds into dx in fp32 before the single bf16 rounding; no host sync either.
//
// Expert parallelism (options.expert_group of ep ranks, docs/parallelism.md §Expert parallelism):
// this rank holds El = E/ep experts, [rank El, (rank + 1) El). After the permute, the [E, C, d]
// rows go to the experts' owners by one all-to-all-v (rank p receives [El, C_q, d] from every rank
// q, C_q being q's capacity or largest load, gathered over the group: one host sync per forward);
// the owner lays them out expert-major, [El, sum_q C_q, d], runs its experts as one strided batch
// and sends the outputs back the same way. Backward exchanges dout and dxb likewise. Decoding and
// the grouped and padded-slot GEMMs are single-GPU only (the padded rows then cover every C row).
//
// Legend: T tokens, d hidden, F ffn, F1 = F (GELU) or 2F (SwiGLU), E experts, k, C capacity, R
// rows, El experts on this rank.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "cuda/device.h"
#include "cuda/gemm.h"
#include "cuda/moe_decode.h"
#include "cuda/moe_gating.h"
#include "cuda/moe_mix.h"
#include "cuda/padded_rows.h"
#include "dist/device_group.h"
#include "moe/moe_config.h"

namespace moex::cuda {

enum class DroplessGemm { kGrouped, kPadded, kPacked };

// Buffers a MoE layer needs only inside one forward or one backward call: the routed input rows,
// the backward's row gradients, the fp32 router input and its gradient, and (for forwards that
// keep nothing for backward) the expert activations. Every layer of a model on one stream can
// share one (the stream orders their uses, docs/gpu-model.md), so a model holds one set of these
// instead of one per layer. A slot only grows; a grown slot has a new address, so a layer asks for
// its pointers afresh in every call.
class MoEScratch {
 public:
  // kEpX, kEpStage, kEpRows: expert parallelism's rows on the owner, the exchanges' receive
  // buffer, and the owner's output or gradient rows.
  enum Slot {
    kXb,
    kH,
    kA,  // the expert activations a; in backward da, then a recomputed over it
    kOut,
    kDout,
    kDh,
    kXj,
    kDxj,
    kDxe,
    kEpX,
    kEpStage,
    kEpRows,
    kDtdShares,  // Duplicate Token Dropping: this rank's shares, sent
    kDtdGot,     //   the shares received
    kDtdMine,    //   the received shares in per-peer slots
    kDtdAll,     //   every tp rank's slots, gathered
    kNumSlots
  };
  // Slot s with room for at least `bytes`; grows it (after a stream sync) when smaller.
  void* get(Slot s, size_t bytes, CudaContext& ctx);
  size_t bytes() const;  // held in all slots
  // A forward that writes its expert activations (kH, kOut) here takes a new ticket; a
  // backward reading them back checks that the ticket is still its own.
  uint64_t claim_activations() { return ++activations_ticket_; }
  uint64_t activations_ticket() const { return activations_ticket_; }

 private:
  Tensor slots_[kNumSlots];  // flat u8 on the device
  uint64_t activations_ticket_ = 0;
};

struct MoELayerCudaOptions {
  int64_t max_tokens = 0;  // buffers are planned for this many tokens at construction
  // kPadded: strided-batched GEMMs over [E, max load, d]. kGrouped: exact rows;
  // cublasGemmGroupedBatchedEx for the bf16-output GEMMs, one cublasGemmEx per expert for the
  // fp32 weight gradients (bf16 in / fp32 out is not a grouped-API type combination).
  // kPacked: kGrouped's packed rows, each expert's rounded up to padded_row_multiple (about
  // T x k rows, not E x the largest load: the rows a training forward keeps take that much less
  // memory), with kPadded's per-expert GEMMs; forwards within the decode kernels' reach and
  // expert-parallel ones take kPadded's layout, which those need.
  DroplessGemm dropless_gemm = DroplessGemm::kPadded;
  // kPadded: expert e's GEMMs cover its rows rounded up to this multiple (capped at the max
  // load) instead of the max load, one GEMM per expert over up to four streams (the kernel chosen
  // per band of row counts, cuda/varying_gemm.h). 0 = one strided-batched call over
  // [E, max load] (the old way). kPacked: each expert's packed block is its rows rounded up to
  // this (0: exact rows; cuBLASLt then chose kernels afresh for many row counts,
  // docs/gpu-model.md). Used when it saves at least 3% of the padded rows. Off by default: measured
  // no gain on H100 (finegrained 6.09 ms at 0 vs 6.11 at 64 vs 6.36 at 16; max load is only 6.6%
  // over the mean).
  int64_t padded_row_multiple = 0;
  // The expert weights and their gradients come from bind_expert_buffers (a model's buffers):
  // the layer allocates neither.
  bool external_expert_buffers = false;
  // Where the layer's within-one-call buffers live (see MoEScratch); null: a scratch of its own.
  // Layers sharing one must issue their work on the same stream.
  MoEScratch* scratch = nullptr;
  // Forwards that keep nothing for backward over at most this many tokens run the decode kernels
  // (cuda/moe_decode.h: selected experts' weights only, no host sync) when the rows use the
  // padded layout (capacity mode, or dropless kPadded or kPacked). 0 = never; at most
  // kMaxDecodeCapacity.
  // 32: measured on the H200 with a Mixtral-shaped layer (docs/results.md), the decode kernels
  // beat the GEMM path at 1 and 8 tokens (160 / 465 us against 195 / 490 us), are within 1 % of it
  // at 16 and 32 (550 / 562 against 545 / 559 us) and need no host sync, so a decode step of up to
  // 32 sequences is captured into a CUDA graph; at 64 tokens the GEMM path is faster (585 against
  // 782 us).
  int64_t decode_max_tokens = 32;
  // Dropless forwards that keep nothing over more than decode_max_tokens tokens, whose E x T rows
  // are at most this many, lay their rows out as capacity mode with C = T: a token picks an expert
  // at most once, so no route can drop and the routes are the dropless ones, and the GEMMs take T
  // rows an expert without the counts sync, so such a decode step is captured into a CUDA graph
  // too. They compute E x T rows where the routes fill k x T, which costs little while the layer is
  // bound by reading the weights (docs/gpu-model.md §Decoding); bounding the rows rather than the
  // tokens keeps many-expert layers (E / k large) on the sync. 0 = never.
  int64_t token_rows_max_rows = 0;
  // Expert parallelism: the group of ranks that share this layer's experts (this rank holds
  // E / size() of them, see the header comment). Null or a group of one: every expert is here.
  // Must outlive the layer. Incompatible with DroplessGemm::kGrouped.
  dist::DeviceGroup* expert_group = nullptr;
  // Duplicate Token Dropping (docs/parallelism.md §DTD), with an expert group: the tensor-parallel
  // group whose ranks run this layer on the same tokens. Each exchange then sends only this
  // rank's share of every block and all-gathers the shares over this group. Null: off.
  dist::DeviceGroup* duplicate_group = nullptr;
  // Expert tensor-slicing (docs/parallelism.md §Expert tensor-slicing): the tensor-parallel group
  // whose ranks run this layer on the same tokens, each with its F/tp slice of every expert's
  // hidden width (config.ffn_size is the slice's). The expert output rows, and in backward their
  // input gradients, are summed over this group. Null: off. No decode kernels then.
  dist::DeviceGroup* slice_group = nullptr;
};

// One forward's mode and random streams.
struct MoEStepCuda {
  bool training = false;  // jitter, RSample, Gumbel second expert, the train capacity factor
  uint64_t seed = 0, offset = 0;  // the random streams, exactly as the CPU layer's
  // False: nothing is kept (the expert rows use the scratch) and backward is an error until the
  // next forward that keeps.
  bool keep_for_backward = true;
  // With keep_for_backward: keep h and the expert outputs in the shared scratch (MoEScratch)
  // rather than in this layer's own buffers. Its backward must come before any other forward
  // that uses the scratch's activation slots (an activation-checkpoint recompute); it checks.
  // Ignored under expert parallelism, whose kept rows stay in the layer's own buffers.
  bool keep_in_scratch = false;
  // False: capacity-mode layers keep every route (C = T), as MoEForwardOptions::drop_tokens.
  bool drop_tokens = true;
  // False: the statistics are not copied to the host (stats() is then an error until a forward
  // that copies them): a captured decode step keeps no host copy in its graph.
  bool copy_stats = true;
  // Communication-aware activation checkpointing under expert parallelism: keep_exchange marks a
  // checkpointed first pass, whose exchanged rows (the owners' x rows, the outputs brought back)
  // stay in the layer's own buffers; reuse_exchange marks its recompute (same routing), which
  // takes them instead of exchanging again. Ignored without an expert group.
  bool keep_exchange = false;
  bool reuse_exchange = false;
  // With keep_for_backward (not in the scratch, no expert parallelism): memory the caller lends
  // for the kept rows (h, then the outputs), which it leaves alone until this layer's backward
  // has run. Used when the forward's rows fit (kept_bytes_bound), else the layer's own buffers.
  // A model lends gradient memory that backward writes only after this layer's backward
  // (docs/gpu-model.md §Kept rows in gradient memory).
  void* lent = nullptr;
  size_t lent_bytes = 0;
};

// The expert-row exchanges of a layer so far (expert parallelism; all zero without it).
struct ExchangeStatsCuda {
  int64_t exchanges = 0;           // all-to-alls of expert rows: two a forward, two a backward
  int64_t bytes_sent = 0;          // bytes of rows this rank sent to the other ranks of its group
  int64_t gather_bytes_sent = 0;   // DTD: bytes sent to the other tp ranks in the all-gathers
  int64_t slice_reduce_bytes = 0;  // expert slicing: the all-reduced rows' bytes
  // CAC: the all-to-alls a recompute took from its first pass instead, and their bytes.
  int64_t exchanges_saved = 0, bytes_saved = 0;
  double ms = 0;  // stream time inside the all-to-alls (CUDA events), waits for peers included
};

// Results of the last forward, copied to pinned host memory on the stream.
struct MoEStatsCuda {
  double aux_loss = 0;   // unweighted
  double z_loss = 0;     // unweighted
  int64_t capacity = 0;  // C used (dropless: the largest load)
  int64_t num_rows = 0;
  int64_t num_dropped = 0;
  std::vector<int32_t> load;    // [E] before dropping
  std::vector<int32_t> counts;  // [E] kept
};

class MoELayerCuda {
 public:
  MoELayerCuda(const MoEConfig& config, const MoELayerCudaOptions& options, CudaContext& ctx);
  ~MoELayerCuda();
  MoELayerCuda(const MoELayerCuda&) = delete;
  MoELayerCuda& operator=(const MoELayerCuda&) = delete;

  // fp32 (or bf16) tensors on any device: router_w [E,d], w1 [El,F1,d], w2 [El,d,F] (this rank's
  // experts), bias [E] (may be undefined). The router is kept fp32; expert weights bf16.
  void set_parameters(const Tensor& router_w, const Tensor& w1, const Tensor& w2,
                      const Tensor& bias = Tensor());
  // PR-MoE residual MLP: w1 [Fr1,d], w2 [d,Fr], coef [2,d] (fp32 or bf16, any device; coef kept
  // fp32).
  void set_residual_parameters(const Tensor& w1, const Tensor& w2, const Tensor& coef);
  // Shared expert: w1 [Fs1,d], w2 [d,Fs], gate [1,d] (only with config.shared_gate).
  void set_shared_parameters(const Tensor& w1, const Tensor& w2, const Tensor& gate = Tensor());
  // Model mode (docs/gpu-model.md): compute with these bf16 expert weights, w1 [El,F1,d] and
  // w2 [El,d,F] (views of a model's bf16 compute copy), and ADD the expert weight gradients into
  // dw1, dw2 (fp32 or bf16 views of its gradient buffer; both undefined for an inference model,
  // whose backward is refused) instead of overwriting buffers of the layer's own. set_parameters
  // then takes undefined w1/w2 and leaves the bound ones in place. The views must stay valid while
  // the layer uses them.
  void bind_expert_buffers(const Tensor& w1, const Tensor& w2, const Tensor& dw1,
                           const Tensor& dw2);
  // Model mode: the next backwards add into dw1, dw2 (the default) or write over them, zeroing
  // the experts that got no rows.
  void set_bound_expert_grads_accumulate(bool accumulate);
  // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) drawn on the device from Philox(seed) (benchmarks).
  void init_random(uint64_t seed);

  // x [T,d] bf16 (device) -> y [T,d] bf16 (device, preallocated). Keeps what backward needs
  // (x itself is read again by backward: it must stay unchanged until then). The statistics of
  // the forward are copied to pinned host memory on the stream; stats() waits for that copy only.
  void forward(const Tensor& x, const Tensor& y, const MoEStepCuda& step);
  void forward(const Tensor& x, const Tensor& y, bool training, uint64_t seed = 0,
               uint64_t offset = 0) {
    forward(x, y, MoEStepCuda{training, seed, offset});
  }
  // dy [T,d] bf16 -> dx [T,d] bf16; the parameter gradients below are overwritten (the bound
  // expert gradients of model mode are added to). The layer's loss
  // is aux_loss_coef * aux + z_loss_coef * z, whose gradients are included.
  void backward(const Tensor& dy, const Tensor& dx);
  // Weight of the aux and z losses in the objective backward differentiates (1/grad_accum).
  void set_loss_scale(float scale) { loss_scale_ = scale; }

  MoEStatsCuda stats() const;  // waits for the last forward's statistics copy

  const MoEConfig& config() const { return config_; }
  int local_experts() const { return El_; }  // El: the experts this rank holds
  // The exchanges so far; waits for the ones queued to finish (their time is read then).
  ExchangeStatsCuda exchange_stats();
  const GatingOutputs& plan() const { return plan_; }  // device arrays of the last forward
  int64_t num_rows() const { return rows_; }           // R of the last forward
  int64_t capacity() const { return capacity_; }
  // Parameters (device): router_w [E,d] f32, bias [E] f32, w1 [El,F1,d] bf16, w2 [El,d,F] bf16.
  const Tensor& router_w() const { return router_w_; }
  const Tensor& w1() const { return w1_; }
  const Tensor& w2() const { return w2_; }
  // Gradients (device, fp32): d_router_w [E,d], dw1 [El,F1,d], dw2 [El,d,F].
  const Tensor& grad_router_w() const { return d_router_w_; }
  const Tensor& grad_w1() const { return dw1_; }
  const Tensor& grad_w2() const { return dw2_; }
  // Residual / shared gradients (device, fp32; undefined when the config has no such part):
  // residual w1 [Fr1,d], w2 [d,Fr], coef [2,d]; shared w1 [Fs1,d], w2 [d,Fs], gate [1,d].
  const Tensor& grad_residual_w1() const { return res_.dw1; }
  const Tensor& grad_residual_w2() const { return res_.dw2; }
  const Tensor& grad_residual_coef() const { return dwc_; }
  const Tensor& grad_shared_w1() const { return sh_.dw1; }
  const Tensor& grad_shared_w2() const { return sh_.dw2; }
  const Tensor& grad_shared_gate() const { return dws_; }

  // Dropless host-sync accounting (benchmarks): host_wait_ms() is the total wall time the host
  // spent blocked in the counts copy and its stream sync over all forwards, host_syncs() their
  // number. reuse_dropless_counts(true) makes later dropless forwards skip the copy and reuse the
  // last forward's counts — valid only while routing does not change (the benchmark's fixed x and
  // seed); it exists to time "the same forward with the capacity known in advance".
  double host_wait_ms() const { return host_wait_ms_; }
  int64_t host_syncs() const { return host_syncs_; }
  int64_t decode_forwards() const { return decode_forwards_; }  // forwards on the decode kernels
  void reuse_dropless_counts(bool on) { reuse_counts_ = on; }

  // Saved forward activations for tests: logits z [T,E] f32, expert output rows [R, d] bf16 (a
  // training forward's; a forward without training keeps none).
  const Tensor& logits() const { return z_; }
  const Tensor& expert_out() const { return saved_out_; }
  // The most bytes a forward of `tokens` tokens keeping for backward puts in lent memory
  // (MoEStepCuda::lent): h [R, F1] and the outputs [R, d] bf16 for the largest R its layout can
  // take, each block 256-byte aligned. 0 when its rows never go there: expert parallelism, or
  // rows with no bound below E x T (dropless kPadded).
  static size_t kept_bytes_bound(const MoEConfig& config, const MoELayerCudaOptions& options,
                                 int64_t tokens, bool training, bool drop_tokens);
  // Bytes of the rows this layer keeps for backward in buffers of its own (saved h and outputs).
  size_t kept_bytes() const {
    return (saved_h_.defined() ? saved_h_.nbytes() : 0) +
           (saved_out_.defined() ? saved_out_.nbytes() : 0);
  }

 private:
  float loss_scale_ = 1.0f;
  float weight_grad_beta_ = 0.0f;  // 1: expert weight gradients accumulate (model mode's default)
  bool bound_experts_ = false;     // model mode (bind_expert_buffers)
  // Points buf_ at room for `rows` expert rows: the saved h/out of a training forward are the
  // layer's own, the rest comes from the scratch. Backward calls it again (the scratch may have
  // grown and moved since the forward).
  void ensure_rows(int64_t rows);
  // Keeps this forward's rows_ in step.lent when they fit there (and the forward keeps rows of
  // its own).
  void use_lent_rows(const MoEStepCuda& step);
  // t [>= rows, cols] bf16, the layer's own: grown (rounded up by grown_rows) only when a load
  // exceeds every earlier one, after the kernels queued on the old block have finished.
  void grow_rows(Tensor& t, int64_t rows, int64_t cols);
  void point_scratch(int64_t rows, bool backward);
  // The per-expert operand pointers of the grouped / padded GEMMs, for the current buf_.
  void upload_operands();
  // The rows the expert GEMMs run on: `experts` blocks of `capacity` rows (padded layouts; the
  // grouped path packs `rows` rows), with their buffers.
  struct ExpertRows {
    int experts = 0;
    int64_t capacity = 0, rows = 0;
    void *xb = nullptr, *h = nullptr, *a = nullptr, *out = nullptr;
    void *dout = nullptr, *da = nullptr, *dh = nullptr;
  };
  ExpertRows local_rows() const;  // this rank's own layout: all E experts, buf_
  void experts_forward(const ExpertRows& r);
  void experts_backward(const ExpertRows& r);
  // Expert parallelism (see the header comment).
  bool expert_parallel() const { return ep_ > 1; }
  // The router's fp32 products in moex's kernels (cuda/router_gemm.h) where they fit, else
  // cuBLAS's SGEMM; MOEX_ROUTER_CUBLAS=1 keeps cuBLAS (measurements).
  bool own_router_gemms(const void* xj, const void* out) const;
  void gather_capacities();  // ep_caps_ and ep_total_ of this forward (one host sync)
  // Points buf_ and ep_rows_ at the rows of this call: kept activations in the layer's own
  // buffers, the rest in the scratch.
  // own: kept rows in the layer's own buffers (a forward keeping for backward or for a CAC
  // recompute), else the scratch.
  void point_ep_buffers(bool backward, bool own);
  // local [E, C, d] rows (peer-major: experts p El.. belong to rank p) -> owner [El, sum C_q, d].
  void to_owners(const void* local, void* owner);
  // owner [El, sum C_q, d] -> local [E, C, d]: the reverse.
  void from_owners(const void* owner, void* local);
  // Rows of the exchange per rank q: this rank's El x C rows (this_rank) or q's El x C_q.
  std::vector<int64_t> exchange_rows(bool this_rank) const;
  // One exchange of bf16 rows: out_rows[q] rows to rank q (blocks back to back in send),
  // in_rows[q] from it (likewise in recv); counted and timed. Under DTD through exchange_shares.
  void exchange(const void* send, void* recv, const std::vector<int64_t>& out_rows,
                const std::vector<int64_t>& in_rows);
  void exchange_shares(const char* send, char* recv, const std::vector<int64_t>& out_rows,
                       const std::vector<int64_t>& in_rows);
  int64_t sent_rows(int64_t block_rows) const;  // of a block: all, or this rank's DTD share
  // Bytes an exchange of blocks of block_rows[q] rows to rank q sends to the other ranks.
  int64_t bytes_to_others(const std::vector<int64_t>& block_rows) const;
  // Between the exchange's receive layout (stage: [El, C_q, d] from every rank q, back to back)
  // and the owner's expert-major one (expert e's rows from q at row e sum C + sum_{r<q} C_r): one
  // 2-D copy per rank, stage -> owner when into_owner, else back.
  void relayout_owner_rows(char* stage, char* owner, bool into_owner);
  // The forward's expert stage on the decode kernels, and the stages after the experts.
  void decode_forward(const Tensor& x, const Tensor& y, int64_t max_capacity);
  void finish_forward(const Tensor& x, const Tensor& y);

  // A dense MLP (residual or shared expert): one "expert" over all T rows.
  struct DenseMlp {
    int64_t f = 0, f1 = 0;
    Tensor w1, w2, dw1, dw2;  // [F1,d] [d,F] bf16; grads fp32
    // [T,F1] [T,d] [T,d] [T,F] [T,F1] bf16; da holds a in forward (backward recomputes it).
    Tensor h, out, dout, da, dh;
    bool defined() const { return f > 0; }
  };
  void dense_init(DenseMlp& m, int64_t ffn, int64_t max_tokens);
  void dense_forward(DenseMlp& m, const void* x, int64_t T);
  // dout in m.dout; dx contribution written (beta 0) or added (beta 1) into dxe_ (fp32).
  void dense_backward(DenseMlp& m, const void* x, int64_t T, float beta);
  MixParams mix_params(int64_t T) const;

  MoEConfig config_;
  MoELayerCudaOptions options_;
  CudaContext& ctx_;
  int64_t d_, f_, f1_;
  int E_, k_;
  dist::DeviceGroup* group_ = nullptr;   // options_.expert_group
  dist::DeviceGroup* dedup_ = nullptr;   // options_.duplicate_group when it has several ranks
  dist::DeviceGroup* slices_ = nullptr;  // options_.slice_group when it has several ranks
  // Expert slicing: sums `rows` bf16 rows of d over slices_ in place (nothing without slicing).
  void sum_slices(void* rows_buf, int64_t rows);
  int ep_ = 1, El_ = 0;             // group size; experts held here (E / ep)
  std::vector<int64_t> ep_caps_;    // [ep] C of every rank of the group in the last forward
  int64_t ep_total_ = 0;            // sum of ep_caps_: rows of each expert held here
  Tensor ep_caps_dev_;              // [ep] i32, the all-gather's result
  Tensor ep_x_, ep_h_, ep_out_;     // kept rows: owner [El*sum C, d|F1], local out [E*C, d]
  ExpertRows ep_rows_;              // the owner's rows of the current call
  bool exchange_kept_ = false;      // the last forward kept its exchange (keep_exchange)
  std::vector<int64_t> kept_caps_;  // ep_caps_ of the last forward
  ExchangeStatsCuda exchanged_;     // counted as queued (ms: see exchange_timer_)
  SpanTimer exchange_timer_;        // spans of the all-to-alls on the stream

  Tensor router_w_, bias_, w1_, w2_;
  Tensor d_router_w_, dw1_, dw2_;

  // Planned buffers.
  Tensor z_, s_, dz_;                                          // [T,E] f32
  Tensor expert_, route_score_, slot_, row_, gates_, dgates_;  // [T*k]
  Tensor gather_, offsets_, stats_dev_, aux_grad_;
  Tensor workspace_;
  // A training forward's rows [R,F1] [R,d] bf16 (backward recomputes a from h).
  Tensor saved_h_, saved_out_;
  MoEScratch own_scratch_;
  MoEScratch* scratch_ = nullptr;  // options_.scratch or &own_scratch_
  // The buffers of the current call. Rows: xb [R,d], h [R,F1], a [R,F], out [R,d], dout [R,d],
  // da [R,F], dh [R,F1] bf16; xj, dxj [T,d] f32 (router input, its gradient); dxe [T,d] f32 (the
  // residual / shared MLPs' dx).
  struct Buffers {
    void *xb = nullptr, *h = nullptr, *a = nullptr, *out = nullptr;
    void *dout = nullptr, *da = nullptr, *dh = nullptr;
    float *xj = nullptr, *dxj = nullptr, *dxe = nullptr;
  } buf_;
  // The statistics of the last forward in pinned host memory: losses (2 f64), info (4 i32), load
  // and counts ([E] i32 each), and the event that marks their copy done.
  size_t stats_bytes() const;  // the statistics block on the device and its pinned copy
  void* stats_host_ = nullptr;
  cudaEvent_t stats_ready_ = nullptr;
  bool stats_copied_ = false;  // the last forward queued the statistics' copy
  Tensor grouped_ptrs_;        // [6, 3, E] device pointer arrays (dropless kGrouped)
  std::vector<const void*> host_ptrs_;
  std::vector<int> group_experts_;    // experts with rows, in order
  std::vector<int64_t> host_counts_;  // [E] rows per expert (dropless)
  std::vector<int> slot_experts_;     // expert of each operand-pointer slot (grouped / padded)
  // The rows each slot's GEMMs compute on, slots ordered by rows; host_ptrs_ holds their
  // pointers. kPadded with padded_row_multiple: the expert's load rounded up; kPacked: its load.
  // Empty = one strided-batched (E x C rows) or grouped (kGrouped) call per GEMM.
  std::vector<int64_t> slot_rows_;
  std::vector<int> zero_experts_;  // dropless: experts with no rows (weight gradients zeroed)
  void build_padded_slots(const std::vector<int64_t>& counts);
  // Slots of the experts with rows, m[e] rows each, ordered by rows.
  void set_slots(const std::vector<int64_t>& m);
  // Forwards whose dropless rows are packed (kGrouped's layout) rather than E x C.
  bool packs_rows(int64_t tokens, bool keep) const;
  // Packed rows: each expert's block is its count rounded up to this (kPacked:
  // padded_row_multiple, so the per-expert GEMMs see row counts in its steps; kGrouped: 1).
  int64_t packed_row_align() const;
  std::vector<int64_t> packed_rows(const std::vector<int64_t>& counts) const;  // [E] -> [E]
  // Operand pointers of the six expert GEMMs for expert e whose rows start at row0, at `slot`.
  void set_expert_operands(int slot, int e, int64_t row0);
  // Expert GEMM gi (0..5) over the padded slots / over group_experts_; the rows dimension of
  // `shape` (m, or k for the weight gradients) is replaced by each slot's / expert's rows.
  void per_expert_gemm(int gi, const GemmShape& shape, bool c_f32);  // one call per slot
  void grouped_gemm(int gi, const GemmShape& shape, bool c_f32);
  // The rows the padded per-expert GEMMs compute on (kernels over all rows skip the rest); every
  // row when the GEMMs run as one strided batch.
  PaddedRows used_rows() const;
  // Expert GEMM gi over this call's rows: per expert when slot_rows_ is set, else one grouped call
  // (packed rows) or one strided batch over `experts` blocks of the shape's rows (E x C rows; a,
  // b, c and their strides are that batch's operands).
  void expert_gemm(int gi, const GemmShape& shape, bool c_f32, int experts, const void* a,
                   int64_t stride_a, const void* b, int64_t stride_b, void* c, int64_t stride_c);
  // Expert GEMM gi over all E experts at once (capacity mode, or padding that saves < 3%).
  void strided_gemm(int gi, int experts, const GemmShape& shape, const void* a, int64_t stride_a,
                    const void* b, int64_t stride_b, void* c, int64_t stride_c, bool c_f32);

  // Residual / shared expert state.
  DenseMlp res_, sh_;
  Tensor wc_, ws_, dwc_, dws_;       // [2,d] [1,d] fp32 and their gradients
  Tensor ym_, dym_;                  // [T,d] bf16 MoE part of y and its gradient
  Tensor coef_, gatev_, dcl_, dgl_;  // [T,2] [T] [T,2] [T] fp32
  Tensor mix_partial_;               // mix_weight_grad scratch
  double host_wait_ms_ = 0;
  int64_t host_syncs_ = 0, decode_forwards_ = 0;
  bool reuse_counts_ = false, have_counts_ = false;
  int64_t counts_tokens_ = 0;

  GatingOutputs plan_;
  GatingParams gating_;
  int64_t tokens_ = 0, rows_ = 0, capacity_ = 0;
  bool training_ = false, kept_ = false;
  bool kept_in_scratch_ = false;  // kept_, with h and out in the shared scratch
  // The last forward's rows are packed (dropless kGrouped, or kPacked's packs_rows) rather than
  // E x C (capacity mode's or dropless kPadded's layout, a forward under token_rows_max_rows
  // included).
  bool grouped_ = false;
  // The last forward kept h and out in this layer's saved buffers (not the scratch).
  bool keeps_own_rows() const { return kept_ && !kept_in_scratch_; }
  // The last forward kept h and out in the caller's lent memory, from here ([R,F1] then [R,d]).
  void* lent_ = nullptr;
  uint64_t scratch_ticket_ = 0;  // MoEScratch::claim_activations of the last forward
  uint64_t seed_ = 0, offset_ = 0;
  const void* x_ = nullptr;  // input of the last forward (backward reads it through xb)
};

}  // namespace moex::cuda
