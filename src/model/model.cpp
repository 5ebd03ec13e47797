#include "model/model.h"

#include <algorithm>
#include <cstring>

#include "core/env.h"
#include "core/logging.h"
#include "core/timer.h"
#include "model/lm_head.h"
#include "model/paged_step_relay.h"
#include "ops/device.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/paged_attention.h"
#include "ops/step_graph.h"

namespace moex::model {

Model::Model(const ModelConfig& config, Device device, dist::Communicator* expert_group,
             const TensorParallel& tp, bool offload, const ModelState& state)
    : config_(config),
      device_((ops::use_device(device), device)),
      trainable_(state.trainable),
      expert_group_(expert_group),
      tp_(tp),
      arena_(size_t{16} << 20, device, /*growable=*/true) {
  config_.validate();
  MOEX_CHECK(!tp_.active() || device_.is_cpu() || tp_.device_group != nullptr,
             "tensor parallelism on ", device_.str(),
             " needs the tp group's GPU communicator (TensorParallel::device_group)");
  const int64_t d = config_.hidden_size;
  const int vocab_split = tp_.active() ? 0 : -1;
  const int64_t vocab_rows = tp_.part(config_.vocab_size);
  final_norm_ = std::make_unique<NormLayer>(config_.norm, d, config_.norm_eps);
  for (int i = 0; i < config_.num_layers; ++i)
    blocks_.push_back(std::make_unique<Block>(config_, i, expert_group, tp_));
  // A bf16 state buffer needs a GPU: a CPU model computes with its fp32 weights. On a GPU bf16
  // gradients and weights train in any layout (their collectives sum bf16 as they sum fp32, and
  // ZeRO stage 2 widens each streamed bucket into its fp32 shard sums). Offload steps either on
  // the host, tile by tile.
  MOEX_CHECK(trainable_ || !offload, "offload moves training state; an inference model has none");
  MOEX_CHECK(state.grads == DType::kF32 || (state.grads == DType::kBF16 && device_.is_cuda()),
             "bf16 gradients need a model on a GPU (got ", dtype_name(state.grads), " on ",
             device_.str(), ")");
  MOEX_CHECK(state.master == DType::kF32 || (state.master == DType::kBF16 && device_.is_cuda()),
             "bf16 master weights need a model on a GPU (got ", dtype_name(state.master), " on ",
             device_.str(), ")");
  if (device_.is_cuda() && state.master == DType::kF32) compute_ = std::make_unique<ParamBuffer>();
  // Every buffer gets the same declarations, so an index means the same tensor in each. The
  // gradient buckets follow them: embedding (and positions), each block, final norm (and head).
  for (ParamBuffer* buffer : {&master_, &grads_, compute_.get()}) {
    if (buffer == nullptr) continue;
    buckets_.clear();
    auto bucket_ends = [&] {
      buckets_.push_back({buckets_.empty() ? 0 : buckets_.back().last + 1, buffer->size() - 1});
    };
    embed_idx_ = buffer->declare("model.embed_tokens.weight", Shape{vocab_rows, d}, vocab_split);
    if (config_.positions == PositionType::kLearned)
      pos_idx_ = buffer->declare("model.embed_positions.weight", Shape{config_.max_seq_len, d});
    bucket_ends();
    for (auto& block : blocks_) {
      block->declare(*buffer);
      bucket_ends();
    }
    final_norm_->declare(*buffer, "model.norm");
    if (!config_.tie_embeddings)
      head_idx_ = buffer->declare("lm_head.weight", Shape{vocab_rows, d}, vocab_split);
    bucket_ends();
  }
  expert_param_.assign(master_.size(), false);
  for (auto& block : blocks_) {
    for (int index : block->ffn().expert_param_indices()) expert_param_[index] = true;
    for (int index : block->ffn().rule_param_indices()) rule_params_.push_back(index);
    for (int index : block->ffn().router_param_indices()) router_params_.push_back(index);
    for (int index : block->attention().partial_grad_indices()) partial_grads_.push_back(index);
  }
  // An fp32 master offloaded: pinned, so the optimizer's copies run at full speed.
  if (offload && device_.is_cuda() && state.master == DType::kF32)
    master_.allocate_in(ops::staging_tensor(Shape{std::max<int64_t>(master_.total_elements(), 1)},
                                            DType::kF32, device_));
  else
    master_.allocate(state.master, device_);
  // An inference model binds its modules to the unallocated gradient buffer: undefined views.
  // Streamed buckets (ZeRO stage 2) of bf16 gradients are widened into fp32 shard sums.
  MOEX_CHECK(!state.stream_gradients || trainable_,
             "streamed gradients (ZeRO stage 2) need a trainable model");
  if (trainable_ && state.stream_gradients) {
    allocate_streamed_grads(state.grads);
  } else if (trainable_) {
    grads_.allocate(state.grads, device_);
    grad_storage_ = {grads_.flat()};
  }
  if (compute_) compute_->allocate(DType::kBF16, device_);
  ops::zero(master_.flat());
  if (!trainable_ && state.master == DType::kBF16) keep_fp32_routers();
  bind_all(own_views());
  // once: no op writes the alignment padding between entries
  for (const Tensor& storage : grad_storage_) ops::zero(storage);
  zero_grad();
  weights_changed();
}

bool Model::is_expert_param(int index) const {
  return expert_param_.at(static_cast<size_t>(index));
}

void Model::set_device_expert_group(dist::DeviceGroup* group) {
  for (auto& block : blocks_) block->ffn().set_device_expert_group(group);
}

ParamViews Model::own_views() {
  return {fp32_weights_.empty() ? master_ : master_view_, compute_params(), grads_,
          trainable_ ? &writes_ : nullptr};
}

void Model::set_fp32_weights(const std::map<int, Tensor>& weights) {
  master_view_ = master_;
  for (const auto& [index, t] : weights) {
    MOEX_CHECK(t.dtype() == DType::kF32 && t.numel() == master_.tensor(index).numel() &&
                   t.device() == device_,
               "set_fp32_weights: ", master_.name(index), " needs ", master_.tensor(index).numel(),
               " f32 elements on ", device_.str());
    master_view_.bind_range(index, index, t);
  }
  fp32_weights_ = weights;
  bind_all(own_views());
}

const Tensor& Model::fp32_weight(int index) const {
  static const Tensor kNone;
  auto it = fp32_weights_.find(index);
  return it == fp32_weights_.end() ? kNone : it->second;
}

void Model::bind_all(const ParamViews& views) {
  embed_ = bind_param(views, embed_idx_);
  pos_ = bind_param(views, pos_idx_);
  head_ = bind_param(views, config_.tie_embeddings ? embed_idx_ : head_idx_);
  for (auto& block : blocks_) block->bind(views);
  final_norm_->bind(views);
}

void Model::weights_changed() {
  master_.flat().mark_written();
  if (compute_) ops::copy(master_.flat(), compute_->flat());
}

void Model::copy_weights_from(const Model& other) {
  MOEX_CHECK(other.master_.total_elements() == master_.total_elements() &&
                 other.master_.size() == master_.size(),
             "copy_weights_from: the models' parameter layouts differ");
  ops::copy(other.master_.flat(), master_.flat());
  for (const auto& [index, view] : own_fp32_views_) {
    const Tensor& fp32 = other.fp32_weight(index);
    ops::copy(fp32.defined() ? fp32 : other.master_.tensor(index), view);
  }
  if (own_fp32_.defined()) own_fp32_.mark_written();
  weights_changed();
}

void Model::keep_fp32_routers() {
  int64_t total = 0;
  for (const std::vector<int>* list : {&router_params_, &rule_params_})
    for (int index : *list) total += master_.tensor(index).numel();
  if (total == 0) return;
  own_fp32_ = Tensor::empty(Shape{total}, DType::kF32, device_);
  ops::zero(own_fp32_);
  int64_t at = 0;
  for (const std::vector<int>* list : {&router_params_, &rule_params_})
    for (int index : *list) {
      const int64_t n = master_.tensor(index).numel();
      own_fp32_views_[index] = own_fp32_.slice(at, at + n);
      at += n;
    }
  set_fp32_weights(own_fp32_views_);
}

ParamBuffer Model::host_params() const {
  if (master_on_host()) return master_;
  if (master_.flat().dtype() == DType::kF32) return master_.copy_to(Device::cpu());
  ParamBuffer host = master_.like(DType::kF32, Device::cpu());
  ops::copy(master_.flat(), host.flat());            // bf16 widens to fp32 exactly
  for (const auto& [index, view] : own_fp32_views_)  // the fp32 routers an inference model keeps
    ops::copy(view, host.tensor(index).view(view.shape()));
  return host;
}

void Model::store_host_params(const ParamBuffer& host) {
  if (host.flat().raw_data() != master_.flat().raw_data()) ops::copy(host.flat(), master_.flat());
  for (const auto& [index, view] : own_fp32_views_)
    ops::copy(host.tensor(index).view(view.shape()), view);
  if (own_fp32_.defined()) own_fp32_.mark_written();
  weights_changed();
}

void Model::draw_bucket(size_t bucket, uint64_t seed) {
  // Every number comes from a Philox stream at a fixed offset, so the buckets may be drawn in any
  // order, whole or one at a time. One stream: the embedding, the learned positions, the LM head.
  // Under tp each rank draws the numbers of its vocabulary rows.
  const int64_t d = config_.hidden_size, v = config_.vocab_size, l = config_.max_seq_len;
  const int vocab_split = tp_.active() ? 0 : -1;
  const float std = config_.init_std;
  if (bucket == 0) {
    fill_normal_part(embed_.w, v, d, vocab_split, tp_, std, seed, 0, 0);
    if (pos_) fill_normal_part(pos_.w, l, d, -1, tp_, std, seed, 0, v * d);
  } else if (bucket == buckets_.size() - 1) {
    if (!config_.tie_embeddings)
      fill_normal_part(head_.w, v, d, vocab_split, tp_, std, seed, 0, v * d + (pos_ ? l * d : 0));
    final_norm_->init();
  } else {
    // Each block draws from its own Philox streams; the large fills are parallel inside
    // (fill_normal).
    blocks_.at(bucket - 1)->init(seed);
  }
}

ParamBuffer Model::init_weights(uint64_t seed, bool keep_drawn) {
  // Weights are drawn on the host (the same numbers on every device): a GPU model binds its
  // modules to a host buffer of the same layout for the drawing, then copies it over.
  if (!keep_drawn && own_fp32_views_.empty()) {
    // One bucket at a time through a host window, each copied into its place (cast to the
    // master's dtype).
    int64_t window_size = 1;
    for (const EntryRange& r : buckets_)
      window_size = std::max(window_size, master_.range_elements(r.first, r.last));
    const Tensor window = Tensor::empty(Shape{window_size}, DType::kF32, Device::cpu());
    // Every bucket's entries are views of the window (as streamed gradients share theirs); only
    // the bucket being drawn is written.
    ParamBuffer host = master_.layout();
    for (const EntryRange& r : buckets_) host.bind_range(r.first, r.last, window);
    bind_all({host, host, host});
    for (size_t b = 0; b < buckets_.size(); ++b) {
      const EntryRange& r = buckets_[b];
      const int64_t begin = master_.offset(r.first), n = master_.range_elements(r.first, r.last);
      std::fill(window.data<float>(), window.data<float>() + n, 0.0f);
      draw_bucket(b, seed);
      ops::copy(window.slice(0, n), master_.flat().slice(begin, begin + n));
    }
    bind_all(own_views());
    weights_changed();
    return ParamBuffer();
  }
  const ParamBuffer host = master_on_host() ? master_ : master_.like(DType::kF32, Device::cpu());
  if (device_.is_cuda()) bind_all({host, host, host});
  float* flat = host.flat().data<float>();
  std::fill(flat, flat + host.flat().numel(), 0.0f);
  for (size_t b = 0; b < buckets_.size(); ++b) draw_bucket(b, seed);
  if (device_.is_cuda()) {
    bind_all(own_views());
    store_host_params(host);
  } else {
    weights_changed();
  }
  return host;
}

void Model::allocate_streamed_grads(DType dtype) {
  streams_ = true;
  const EntryRange &front = buckets_.front(), &back = buckets_.back();
  int64_t window = 0;
  for (size_t b = 1; b + 1 < buckets_.size(); ++b)
    window = std::max(window, grads_.range_elements(buckets_[b].first, buckets_[b].last));
  for (const EntryRange& edge : {front, back}) {
    grad_storage_.push_back(
        Tensor::empty(Shape{grads_.range_elements(edge.first, edge.last)}, dtype, device_));
    grads_.bind_range(edge.first, edge.last, grad_storage_.back());
  }
  if (window == 0) return;  // no blocks
  grad_storage_.push_back(Tensor::empty(Shape{window}, dtype, device_));
  for (size_t b = 1; b + 1 < buckets_.size(); ++b)
    grads_.bind_range(buckets_[b].first, buckets_[b].last, grad_storage_.back());
}

int64_t Model::gradient_bytes() const {
  int64_t bytes = 0;
  for (const Tensor& storage : grad_storage_) bytes += static_cast<int64_t>(storage.nbytes());
  return bytes;
}

void Model::sum_partial_grads(int first, int last) {
  for (int index : partial_grads_)
    if (first <= index && index <= last) tp_.all_reduce(grads_.tensor(index));
}

void Model::hand_over(int bucket) {
  MOEX_CHECK(sink_ != nullptr, "a model with streamed gradients needs a sink before backward");
  const EntryRange& r = buckets_.at(static_cast<size_t>(bucket));
  writes_.zero_unwritten(r.first, r.last);
  sum_partial_grads(r.first, r.last);
  sink_->take(bucket, grads_.flat_range(r.first, r.last));
}

ParamBuffer& Model::grads() {
  MOEX_CHECK(trainable_, "this model was made for inference: it has no gradients");
  MOEX_CHECK(!streams_,
             "this model streams its gradients to ZeRO stage 2's shards: it holds no "
             "whole gradient buffer");
  writes_.zero_unwritten();
  return grads_;
}

void Model::zero_grad() {
  if (!trainable_) return;
  writes_.reset();
  blocks_handed_ = false;
  // MOEX_LAZY_ZERO_GRAD=0 (for measurements): clear the buffer now, so every write adds.
  static const bool lazy = env_on_unless_zero("MOEX_LAZY_ZERO_GRAD");
  if (!lazy) writes_.zero_unwritten();
}

void Model::hand_over_blocks() {
  for (int b = static_cast<int>(buckets_.size()) - 2; b >= 1; --b) hand_over(b);
}

void Model::finish_gradients() {
  if (sink_ == nullptr) return sum_partial_grads(0, grads_.size() - 1);
  // Streamed, the blocks went during every backward.
  if (!streams_ && !blocks_handed_) hand_over_blocks();
  blocks_handed_ = false;
  hand_over(0);
  hand_over(static_cast<int>(buckets_.size()) - 1);
}

Tensor Model::whole_logits(const Tensor& local) {
  // Each rank's rows hold its vocabulary slice [rank * Vl, (rank + 1) * Vl): every rank gathers
  // all slices, in rank order, into whole rows.
  const int64_t rows = local.dim(0), vl = local.dim(1), parts = tp_.size();
  const Tensor all = arena_.alloc(Shape{parts, rows, vl}, DType::kF32);
  tp_.all_gather(local, all);
  const Tensor whole = arena_.alloc(Shape{rows, parts * vl}, DType::kF32);
  for (int64_t p = 0; p < parts; ++p)
    ops::copy_columns(all.slice(p, p + 1).view(Shape{rows, vl}), 0, whole, p * vl, vl);
  return whole;
}

void Model::gather_logits(const Tensor& logits, float* out) {
  ArenaScope scope(arena_);
  const Tensor whole = tp_.active() ? whole_logits(logits) : logits;
  ops::copy(whole, Tensor::from_external(out, whole.shape(), DType::kF32));
}

void Model::embed_ids(const Tensor& ids, const Tensor& x) {
  if (!tp_.active()) {
    ops::embedding(ids, embed_.w, x, false);
    return;
  }
  ops::embedding_slice(ids, embed_.w, tp_.rank() * embed_.w.dim(0), x);
  tp_.all_reduce(x);
}

void Model::keep_local_vocab_rows() {
  const int64_t rows = embed_.w.dim(0), first = tp_.rank() * rows, n = ids_.numel();
  const int32_t* id = ids_.data<int32_t>();
  std::vector<int32_t> local, where;
  for (int64_t i = 0; i < n; ++i) {
    MOEX_CHECK(id[i] >= 0 && id[i] < config_.vocab_size, "embedding: id ", id[i], " at position ",
               i, " is outside the table's ", config_.vocab_size, " rows");
    if (id[i] < first || id[i] >= first + rows) continue;
    local.push_back(static_cast<int32_t>(id[i] - first));
    where.push_back(static_cast<int32_t>(i));
  }
  local_ids_ = host_ids(local.data(), static_cast<int64_t>(local.size()));
  local_rows_ = host_ids(where.data(), static_cast<int64_t>(where.size()));
  if (device_.is_cuda() && !where.empty()) local_rows_ = local_rows_.to(device_);  // GPU indices
}

Tensor Model::host_ids(const int32_t* ids, int64_t n) const {
  Tensor t = Tensor::empty(Shape{n}, DType::kI32);
  // n may be 0 with ids null (a tp rank none of whose vocabulary rows a one-token step looks up).
  if (n > 0) std::memcpy(t.raw_data(), ids, static_cast<size_t>(n) * sizeof(int32_t));
  return t;
}

void Model::embed(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t start_pos,
                  const Tensor& x) {
  const int64_t n = batch * seq_len;
  ids_ = host_ids(ids, n);
  if (tp_.active()) keep_local_vocab_rows();
  embed_ids(ids_, x);
  pos_ids_ = Tensor();
  if (!pos_) return;
  MOEX_CHECK(start_pos + seq_len <= config_.max_seq_len, "sequence of ", start_pos + seq_len,
             " tokens exceeds model.max_seq_len (", config_.max_seq_len, ")");
  pos_ids_ = Tensor::empty(Shape{n}, DType::kI32);
  int32_t* p = pos_ids_.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq_len; ++t) p[b * seq_len + t] = static_cast<int32_t>(start_pos + t);
  ops::embedding(pos_ids_, pos_.w, x, true);
}

LossResult Model::forward(const int32_t* ids, const int32_t* targets, int64_t batch,
                          int64_t seq_len, const ForwardOptions& options) {
  MOEX_CHECK(trainable_ || !options.for_backward,
             "this model was made for inference: a forward for backward needs a trainable model");
  const int64_t d = config_.hidden_size, n = batch * seq_len;
  const DType dt = compute_params().flat().dtype();
  arena_.reset();
  batch_ = batch;
  seq_len_ = seq_len;
  // Every block's input stays in the arena until backward.
  std::vector<Tensor> x(blocks_.size() + 1);
  x[0] = arena_.alloc(Shape{n, d}, dt);
  embed(ids, batch, seq_len, 0, x[0]);
  const Block::Keep keep = !options.for_backward            ? Block::Keep::kNothing
                           : options.checkpoint_activations ? Block::Keep::kInputOnly
                                                            : Block::Keep::kAll;
  LossResult result;
  StepOptions base;
  base.training = options.training;
  base.seed = options.seed;
  base.loss_scale = options.loss_scale;
  lent_regions_.assign(blocks_.size(), LentRegion{});
  const std::vector<Tensor> lent =
      keep == Block::Keep::kAll ? lent_rows(n, base) : std::vector<Tensor>(blocks_.size());
  for (size_t i = 0; i < blocks_.size(); ++i) {
    x[i + 1] = arena_.alloc(Shape{n, d}, dt);
    StepOptions step = base;
    step.offset = options.step * 1024 + i;  // one Philox stream per (step, layer)
    step.cac = options.cac && keep == Block::Keep::kInputOnly;
    step.lent_rows = lent[i];
    blocks_[i]->forward(x[i], batch, seq_len, x[i + 1], arena_, keep, step);
  }
  const Tensor hidden = arena_.alloc(Shape{n, d}, dt);
  final_norm_->forward(x.back(), hidden, arena_, options.for_backward);
  // The head's backward runs here, chunk by chunk, while its logits exist (model/lm_head.h).
  dhidden_ = options.for_backward ? arena_.alloc(Shape{n, d}, dt) : Tensor();
  // next-token targets are given aligned with ids: targets[t] is the token after ids[t]
  const double head_scale =
      options.head_loss_scale >= 0 ? options.head_loss_scale : options.loss_scale;
  const HeadLoss head = lm_head_loss(hidden, head_, host_ids(targets, n), head_scale,
                                     dhidden_, arena_, options.soft_targets, tp_);
  result.num_targets = head.count;
  const double count = static_cast<double>(std::max<int64_t>(1, head.count));
  result.loss = head.loss_sum / count;
  result.kd_loss = head.kd_sum / count;
  if (options.soft_targets) result.weighted_kd = options.soft_targets->weight * result.kd_loss;
  // Read after the head: a GPU forward then waits for the device once, not once per MoE layer.
  for (auto& block : blocks_) {
    if (!block->ffn().is_moe()) continue;
    const MoEStats& s = block->ffn().stats();
    result.aux_loss += s.aux_loss;
    result.z_loss += s.z_loss;
    result.weighted_aux += s.weighted_loss;
  }
  return result;
}

void Model::backward(bool last_of_step) {
  MOEX_CHECK(dhidden_.defined(), "Model::backward needs a forward with for_backward first");
  const Tensor& dh = dhidden_;
  MOEX_CHECK(!streams_ || sink_ != nullptr,
             "a model with streamed gradients needs a sink (set_gradient_sink) before backward");
  // Each block's gradients go to the sink as soon as its backward has made them: every
  // micro-batch when streamed, else once they are final.
  const bool hand_blocks = streams_ || (sink_ != nullptr && last_of_step);
  // A sink of the whole buffer sums the blocks in place: a second hand-over in one step would
  // sum what the first already summed.
  MOEX_CHECK(streams_ || !hand_blocks || !blocks_handed_,
             "Model::backward: only the last backward of a step may be marked last_of_step");
  final_norm_->backward(dh, dh);
  for (size_t i = blocks_.size(); i-- > 0;) {
    // Streamed: block i's bucket (i + 1) holds the window, where the last block left its own.
    const EntryRange& bucket = buckets_[i + 1];
    if (streams_) writes_.reset(bucket.first, bucket.last);
    blocks_[i]->backward(dh, dh, arena_);
    zero_lent_padding(static_cast<int>(i) + 1);
    if (hand_blocks) hand_over(static_cast<int>(i) + 1);
  }
  if (hand_blocks && !streams_) blocks_handed_ = true;
  if (!tp_.active()) {
    ops::embedding_backward(ids_, dh, embed_.grad_to_add());
  } else if (local_ids_.numel() > 0) {  // this rank's vocabulary rows only
    ArenaScope scope(arena_);
    const Tensor found = arena_.alloc(Shape{local_ids_.numel(), dh.dim(1)}, dh.dtype());
    ops::gather_rows(dh, local_rows_, found);
    ops::embedding_backward(local_ids_, found, embed_.grad_to_add());
  }
  if (pos_) ops::embedding_backward(pos_ids_, dh, pos_.grad_to_add());
  zero_lent_padding(0);
  writes_.zero_unwritten();  // parameters without a gradient this step (e.g. unused experts)
  dhidden_ = Tensor();
}

std::vector<Tensor> Model::lent_rows(int64_t n, const StepOptions& step) {
  static const bool enabled = env_on_unless_zero("MOEX_KEPT_ROWS_IN_GRADS");
  const size_t L = blocks_.size();
  std::vector<Tensor> lent(L);
  const Tensor& flat = grads_.flat();
  if (!enabled || !lend_grads_ || !device_.is_cuda() || streams_ || !flat.defined() || L == 0)
    return lent;
  const int64_t elem = static_cast<int64_t>(dtype_size(flat.dtype()));
  std::vector<int64_t> begin(L), need(L);
  for (size_t l = 0; l < L; ++l) {
    begin[l] = grads_.offset(buckets_[l + 1].first);
    const int64_t bytes = static_cast<int64_t>(
        blocks_[l]->lent_bytes_bound(device_, n, compute_params().flat().dtype(), step));
    need[l] = (bytes + elem - 1) / elem;
  }
  // A tied head writes the embedding's gradient in forward: only the blocks' memory is free.
  const int64_t floor = config_.tie_embeddings ? begin[0] : 0;
  const std::vector<LentRegion> regions = plan_lent_regions(begin, need, floor, 256 / elem);
  for (size_t l = 0; l < L; ++l) {
    // Only memory that holds nothing of this step (a later micro-batch finds it written).
    if (regions[l].empty() || writes_.any_written(0, buckets_[l + 1].first - 1)) continue;
    lent[l] = flat.slice(regions[l].begin, regions[l].end);
    lent_regions_[l] = regions[l];
  }
  return lent;
}

int64_t Model::lent_gradient_bytes() const {
  int64_t elements = 0;
  for (const LentRegion& r : lent_regions_) elements += r.end - r.begin;
  return elements == 0 ? 0 : elements * static_cast<int64_t>(dtype_size(grads_.flat().dtype()));
}

void Model::zero_lent_padding(int bucket) {
  const EntryRange& r = buckets_.at(static_cast<size_t>(bucket));
  const Tensor& flat = grads_.flat();
  for (int i = r.first; i <= r.last; ++i) {
    const int64_t end = grads_.offset(i) + grads_.tensor(i).numel();
    const int64_t next = i + 1 < grads_.size() ? grads_.offset(i + 1) : grads_.total_elements();
    if (end == next) continue;
    for (const LentRegion& lent : lent_regions_) {
      if (lent.empty() || lent.end <= end || next <= lent.begin) continue;
      ops::zero(flat.slice(end, next));  // a lent region covered some of this padding
      break;
    }
  }
}

Tensor Model::final_hidden(const int32_t* ids, int64_t batch, int64_t seq_len) {
  const int64_t d = config_.hidden_size, n = batch * seq_len;
  const DType dt = compute_params().flat().dtype();
  arena_.reset();
  Tensor x = arena_.alloc(Shape{n, d}, dt), y = arena_.alloc(Shape{n, d}, dt);
  embed(ids, batch, seq_len, 0, x);
  for (auto& block : blocks_) {
    block->forward(x, batch, seq_len, y, arena_, Block::Keep::kNothing, StepOptions{});
    std::swap(x, y);
  }
  final_norm_->forward(x, y, arena_, false);
  return y;
}

void Model::logits(const int32_t* ids, int64_t batch, int64_t seq_len, float* out) {
  const Tensor hidden = final_hidden(ids, batch, seq_len);
  const Tensor logits = arena_.alloc(Shape{batch * seq_len, head_.w.dim(0)}, DType::kF32);
  ops::linear(hidden, head_.w, Tensor(), logits);
  gather_logits(logits, out);
}

KVCache Model::make_cache(int64_t batch, int64_t capacity) const {
  KVCache cache;
  cache.batch = batch;
  cache.capacity = capacity;
  // This rank's kv heads under tensor parallelism.
  const Shape shape{batch, capacity, tp_.part(config_.num_kv_heads), config_.head_dim};
  const DType dt = compute_params().flat().dtype();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    cache.k.push_back(Tensor::empty(shape, dt, device_));
    cache.v.push_back(Tensor::empty(shape, dt, device_));
    ops::zero(cache.k.back());
    ops::zero(cache.v.back());
  }
  return cache;
}

void Model::forward_cached(const int32_t* ids, int64_t batch, int64_t new_len, KVCache& cache,
                           float* last_logits) {
  MOEX_CHECK(batch == cache.batch, "batch ", batch, " does not match the KV cache's ", cache.batch);
  const int64_t d = config_.hidden_size, n = batch * new_len;
  const DType dt = compute_params().flat().dtype();
  arena_.reset();
  Tensor x = arena_.alloc(Shape{n, d}, dt), y = arena_.alloc(Shape{n, d}, dt);
  embed(ids, batch, new_len, cache.length, x);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i]->forward_cached(x, batch, new_len, cache.length, {cache.k[i], cache.v[i]}, y,
                               arena_);
    std::swap(x, y);
  }
  cache.length += new_len;
  // The last new token of each sequence: column block new_len-1 of x viewed [B, Tn*d].
  const Tensor last = arena_.alloc(Shape{batch, d}, dt), normed = arena_.alloc(Shape{batch, d}, dt);
  ops::copy_columns(x.view(Shape{batch, new_len * d}), (new_len - 1) * d, last, 0, d);
  final_norm_->forward(last, normed, arena_, false);
  const Tensor logits = arena_.alloc(Shape{batch, head_.w.dim(0)}, DType::kF32);
  ops::linear(normed, head_.w, Tensor(), logits);
  gather_logits(logits, last_logits);
}

// One layer's keys (or values) of a pool: [blocks, block_size, this rank's kv heads, head_dim].
Shape Model::paged_kv_shape(int64_t num_blocks, int64_t block_size) const {
  return Shape{num_blocks, block_size, tp_.part(config_.num_kv_heads), config_.head_dim};
}

double Model::paged_kv_bytes(int64_t num_blocks, int64_t block_size) const {
  const Shape shape = paged_kv_shape(num_blocks, block_size);
  double elements = 1;
  for (int i = 0; i < shape.ndim(); ++i) elements *= static_cast<double>(shape[i]);
  return 2.0 * static_cast<double>(blocks_.size()) * elements *
         static_cast<double>(dtype_size(compute_params().flat().dtype()));
}

PagedKV Model::make_paged_kv(int64_t num_blocks, int64_t block_size) const {
  MOEX_CHECK(num_blocks > 0 && block_size > 0, "paged KV: num_blocks (", num_blocks,
             ") and block_size (", block_size, ") must be > 0");
  PagedKV kv;
  kv.num_blocks = num_blocks;
  kv.block_size = block_size;
  const Shape shape = paged_kv_shape(num_blocks, block_size);
  const DType dt = compute_params().flat().dtype();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    kv.k.push_back(Tensor::empty(shape, dt, device_));
    kv.v.push_back(Tensor::empty(shape, dt, device_));
  }
  return kv;
}

// A decode step captured for one batch size, and where its outputs sit in the arena.
struct Model::PagedGraph {
  explicit PagedGraph(const Device& device) : graph(device) {}
  ops::StepGraph graph;
  Tensor logits, next;
  const void* kv_key = nullptr;  // the pool it was captured with (its first layer's keys)
  bool failed = false;           // the capture failed (logged): such steps run op by op
};

Model::~Model() = default;

int64_t Model::paged_graph_replays() const {
  int64_t n = 0;
  for (const auto& [batch, g] : paged_graphs_) n += g->graph.replays();
  return n;
}

int64_t Model::paged_graph_captures() const {
  int64_t n = 0;
  for (const auto& [batch, g] : paged_graphs_) n += g->graph.captures();
  return n;
}

double Model::paged_graph_ms(int64_t num_seqs, int iters) {
  const auto it = paged_graphs_.find(num_seqs);
  if (it == paged_graphs_.end() || !it->second->graph.ready() || iters <= 0) return 0.0;
  ops::StepGraph& graph = it->second->graph;
  graph.launch();  // warm
  ops::synchronize(device_);
  const auto start = SteadyClock::now();
  for (int i = 0; i < iters; ++i) graph.launch();  // queued: the device runs them back to back
  ops::synchronize(device_);
  return ms_since(start) / iters;
}

PagedRows Model::paged_rows(const int32_t* ids, const std::vector<SequenceSlice>& seqs,
                            const PagedKV& kv, const ops::SampleParams* sampling) {
  const int64_t num_seqs = static_cast<int64_t>(seqs.size()), block_size = kv.block_size;
  int64_t n = 0, num_logits = 0, max_blocks = std::max<int64_t>(1, kv.table_width);
  for (const SequenceSlice& s : seqs) {
    MOEX_CHECK(s.len >= 1, "forward_paged: a sequence slice of ", s.len, " tokens (at least 1)");
    n += s.len;
    num_logits += s.all_logits ? s.len : 1;
    MOEX_CHECK(kv.table_width == 0 || s.num_blocks <= kv.table_width,
               "forward_paged: a block table of ", s.num_blocks,
               " blocks is wider than the paged KV's table_width (", kv.table_width, ")");
    max_blocks = std::max(max_blocks, s.num_blocks);
  }
  // One host buffer for every index, uploaded once: ids [n], tables [S, max_blocks], then
  // row_seq, row_pos, slots [n], then logit_rows [L], then sample_params [S, kSampleParamWords],
  // then the attention tiles [T, kPagedTileWords] and the rows outside them (planned from row_seq
  // and row_pos below; at most a tile per row, or every row outside them).
  const int64_t tn = num_seqs * max_blocks, pw = ops::kSampleParamWords;
  const int64_t params_end = 4 * n + tn + num_logits + num_seqs * pw;
  const int64_t most = params_end + ops::kPagedTileWords * n + n;
  // The last step's upload may still be queued (its step may still run): wait for it before the
  // staging buffer is rewritten or replaced.
  if (upload_done_) upload_done_->wait();
  if (!step_host_.defined() || step_host_.numel() < most) {
    // Room to spare, so the buffers settle after a few steps (a new device buffer makes captured
    // steps capture again).
    const int64_t room = std::max<int64_t>(most * 2, 4096);
    step_host_ = ops::staging_tensor(Shape{room}, DType::kI32, device_);
    if (device_.is_cuda()) {
      step_dev_ = Tensor();
      step_dev_ = Tensor::empty(Shape{room}, DType::kI32, device_);
      buffers_moved();
    }
  }
  const int64_t vocab = config_.vocab_size;
  for (int64_t r = 0; r < n; ++r)
    MOEX_CHECK(ids[r] >= 0 && ids[r] < vocab, "forward_paged: token ", ids[r], " at row ", r,
               " is outside the vocabulary of ", vocab);
  int32_t* host = step_host_.data<int32_t>();
  std::copy(ids, ids + n, host);
  int32_t* tables = host + n;
  int32_t *row_seq = tables + tn, *row_pos = row_seq + n, *slots = row_pos + n;
  int32_t *logit_rows = slots + n, *params = logit_rows + num_logits;
  std::fill(tables, tables + tn, -1);
  int64_t r = 0, l = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const SequenceSlice& s = seqs[i];
    std::copy(s.blocks, s.blocks + s.num_blocks, tables + i * max_blocks);
    for (int64_t t = 0; t < s.len; ++t, ++r) {
      const int64_t pos = s.start_pos + t;
      row_seq[r] = static_cast<int32_t>(i);
      row_pos[r] = static_cast<int32_t>(pos);
      slots[r] = static_cast<int32_t>(s.blocks[pos / block_size] * block_size + pos % block_size);
      if (s.all_logits || t + 1 == s.len) logit_rows[l++] = static_cast<int32_t>(r);
    }
    ops::write_sample_params(sampling != nullptr ? sampling[i] : ops::SampleParams{},
                             params + i * pw);
  }
  // Prompt chunks long enough for the GPU's tensor-core attention (ops/paged_attention.h).
  ops::PagedTilePlan plan;
  if (std::any_of(seqs.begin(), seqs.end(),
                  [](const SequenceSlice& s) { return s.len >= ops::kPagedTileMinRows; }))
    plan = ops::plan_paged_tiles(row_seq, row_pos, n);
  const int64_t tile_words = static_cast<int64_t>(plan.tiles.size());
  const int64_t rest_rows = static_cast<int64_t>(plan.rest.size());
  const int64_t total = params_end + tile_words + rest_rows;
  std::copy(plan.tiles.begin(), plan.tiles.end(), host + params_end);
  std::copy(plan.rest.begin(), plan.rest.end(), host + params_end + tile_words);
  auto part = [](const Tensor& t, int64_t begin, int64_t count) {
    return t.slice(begin, begin + count);
  };
  ops::check_paged_rows(part(step_host_, n, tn).view(Shape{num_seqs, max_blocks}),
                        part(step_host_, n + tn, n), part(step_host_, 2 * n + tn, n), block_size,
                        kv.num_blocks);
  // The previous step has finished (its outputs were read on the host), so the buffers are free.
  const Tensor dev = device_.is_cpu() ? step_host_ : step_dev_;
  if (device_.is_cuda()) {
    ops::copy_async(part(step_host_, 0, total), part(dev, 0, total));
    if (!upload_done_) upload_done_ = std::make_unique<ops::StreamMark>(device_);
    upload_done_->record();
  }
  PagedRows rows;
  rows.ids = part(dev, 0, n);
  rows.tables = part(dev, n, tn).view(Shape{num_seqs, max_blocks});
  rows.row_seq = part(dev, n + tn, n);
  rows.row_pos = part(dev, 2 * n + tn, n);
  rows.slots = part(dev, 3 * n + tn, n);
  rows.logit_rows = part(dev, 4 * n + tn, num_logits);
  rows.sample_params = part(dev, 4 * n + tn + num_logits, num_seqs * pw).view(Shape{num_seqs, pw});
  if (tile_words > 0) {
    rows.tiles = part(dev, params_end, tile_words)
                     .view(Shape{tile_words / ops::kPagedTileWords, ops::kPagedTileWords});
    rows.rest_rows = part(dev, params_end + tile_words, rest_rows);
  }
  return rows;
}

void Model::paged_forward_body(const PagedRows& rows, PagedKV& kv, Tensor& logits, Tensor& next) {
  const int64_t d = config_.hidden_size, n = rows.ids.numel(), num_seqs = rows.sample_params.dim(0);
  const int64_t num_logits = rows.logit_rows.numel();
  const DType dt = compute_params().flat().dtype();
  Tensor x = arena_.alloc(Shape{n, d}, dt), y = arena_.alloc(Shape{n, d}, dt);
  Tensor h = arena_.alloc(Shape{n, d}, dt), h_next = arena_.alloc(Shape{n, d}, dt);
  embed_ids(rows.ids, x);
  if (pos_) ops::embedding(rows.row_pos, pos_.w, x, true);
  // A decode step has one row a sequence, each its sequence's last: the last block then forms the
  // final norm with its residual add, and no rows are gathered.
  const bool one_row_each = n == num_seqs;
  const Tensor normed = arena_.alloc(Shape{num_logits, d}, dt);
  // Each block hands the next one its input norm, formed with its last residual add.
  blocks_[0]->input_norm().forward(x, h, arena_, false);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const bool last_block = i + 1 == blocks_.size();
    const NormLayer* next = !last_block    ? &blocks_[i + 1]->input_norm()
                            : one_row_each ? final_norm_.get()
                                           : nullptr;
    blocks_[i]->forward_paged(x, h, rows, kv.k[i], kv.v[i], y, next, last_block ? normed : h_next,
                              arena_);
    std::swap(x, y);
    std::swap(h, h_next);
  }
  if (!one_row_each) {
    // The rows the logits are for: each sequence's last new token (or all of its new tokens).
    const Tensor last = arena_.alloc(Shape{num_logits, d}, dt);
    ops::gather_rows(x, rows.logit_rows, last);
    final_norm_->forward(last, normed, arena_, false);
  }
  // Under tensor parallelism every rank samples from the same whole rows, so all draw the same
  // tokens.
  const Tensor head_out = arena_.alloc(Shape{num_logits, head_.w.dim(0)}, DType::kF32);
  ops::linear(normed, head_.w, Tensor(), head_out);
  logits = tp_.active() ? whole_logits(head_out) : head_out;
  next = arena_.alloc(Shape{num_seqs}, DType::kI32);
  if (num_logits == num_seqs)
    ops::sample_rows(
        logits, rows.sample_params, next,
        device_.is_cuda()
            ? arena_.alloc(Shape{ops::sample_rows_workspace_bytes(num_seqs)}, DType::kU8)
            : Tensor());
  else  // a slice with all_logits: forward_paged's caller samples from the logits itself
    ops::zero(next);
}

void Model::capture_paged_graph(PagedGraph& g, const PagedRows& rows, PagedKV& kv) {
  // Run once directly, so every buffer reaches its size for this batch, then capture the same
  // work over the settled arena (nothing may be allocated while capturing). The direct run's
  // outputs stand if the capture fails: capturing runs nothing.
  paged_forward_body(rows, kv, g.logits, g.next);
  arena_.reset();
  try {
    g.graph.capture([&] { paged_forward_body(rows, kv, g.logits, g.next); });
    g.kv_key = kv.k[0].raw_data();
  } catch (const Error& e) {
    // Warned once per model: every larger batch of a dropless model fails the same way.
    const int64_t num_seqs = rows.sample_params.dim(0);
    const bool first = std::none_of(paged_graphs_.begin(), paged_graphs_.end(),
                                    [](const auto& entry) { return entry.second->failed; });
    if (first)
      MOEX_WARN("decode steps of ", num_seqs, " or more sequences may run without CUDA graphs: ",
                "capturing one failed: ", e.what());
    else
      MOEX_DEBUG("decode steps of ", num_seqs, " sequences run without a CUDA graph: ", e.what());
    g.failed = true;
  }
}

void Model::forward_paged(const int32_t* ids, const std::vector<SequenceSlice>& seqs, PagedKV& kv,
                          float* last_logits, int32_t* next, const ops::SampleParams* sampling) {
  // Reading an output is also what tells the host the step's uploads are done with.
  MOEX_CHECK(last_logits != nullptr || next != nullptr,
             "forward_paged: ask for the logits, the next tokens or both");
  MOEX_CHECK(next == nullptr || std::none_of(seqs.begin(), seqs.end(),
                                             [](const SequenceSlice& s) { return s.all_logits; }),
             "forward_paged: a slice with all_logits has no next token drawn; sample its logits");
  MOEX_CHECK(in_flight_.empty(), "forward_paged: ", in_flight_.size(),
             " launched steps are not collected");
  launch_paged(ids, seqs, kv, sampling);
  if (last_logits != nullptr)
    ops::copy(last_logits_, Tensor::from_external(last_logits, last_logits_.shape(), DType::kF32));
  std::vector<int32_t> tokens(seqs.size());
  collect_paged(tokens.data());
  if (next != nullptr) std::copy(tokens.begin(), tokens.end(), next);
}

void Model::launch_paged(const int32_t* ids, const std::vector<SequenceSlice>& seqs, PagedKV& kv,
                         const ops::SampleParams* sampling, bool ids_follow_last) {
  const auto start = SteadyClock::now();
  MOEX_CHECK(!seqs.empty(), "forward_paged: no sequences");
  MOEX_CHECK(in_flight_.size() < 2, "launch_paged: collect a step first (two are in flight)");
  MOEX_CHECK(kv.k.size() == blocks_.size(), "forward_paged: the paged KV has ", kv.k.size(),
             " layers, the model ", blocks_.size());
  bool decode = true;  // one new token per sequence
  for (const SequenceSlice& s : seqs) {
    MOEX_CHECK(s.len > 0 && s.start_pos >= 0 && s.num_blocks * kv.block_size >= s.start_pos + s.len,
               "forward_paged: a sequence of ", s.len, " new tokens at ", s.start_pos, " with ",
               s.num_blocks, " blocks of ", kv.block_size);
    // Learned positions end at max_seq_len; RoPE has no table to run past.
    MOEX_CHECK(!pos_ || s.start_pos + s.len <= config_.max_seq_len, "sequence of ",
               s.start_pos + s.len, " tokens exceeds model.max_seq_len (", config_.max_seq_len,
               ")");
    decode = decode && s.len == 1;
  }
  const int64_t num_seqs = static_cast<int64_t>(seqs.size());
  MOEX_CHECK(!ids_follow_last ||
                 (decode && !in_flight_.empty() && in_flight_.back().next_host.numel() == num_seqs),
             "launch_paged: ids follow the last step only for a decode step of its sequences");
  // The ids of a following step are not known here: zeros pass the host's vocabulary check, and
  // the device copy below replaces them before the step reads them.
  std::vector<int32_t> zeros;
  if (ids_follow_last) zeros.assign(static_cast<size_t>(num_seqs), 0);
  const PagedRows rows = paged_rows(ids_follow_last ? zeros.data() : ids, seqs, kv, sampling);
  if (!tp_.active()) {
    queue_paged_step(rows, kv, decode, ids_follow_last);
  } else {
    // Checked: the group's other ranks run the same step (mirror_paged_steps).
    if (tp_.rank() == 0) send_paged_step(*tp_.group, ids, seqs, sampling, ids_follow_last);
    try {
      queue_paged_step(rows, kv, decode, ids_follow_last);
    } catch (const std::exception& e) {
      MOEX_LOG(kError, "tensor-parallel serving step failed on tp rank ", tp_.rank(), ": ",
               e.what());
      dist::Communicator::abort_job(1);
    }
  }
  host_times_.launch_ms += ms_since(start);
  ++host_times_.launches;
}

void Model::queue_paged_step(const PagedRows& rows, PagedKV& kv, bool decode,
                             bool ids_follow_last) {
  const int64_t num_seqs = rows.sample_params.dim(0);
  if (ids_follow_last) ops::copy(sampled_.slice(0, num_seqs), rows.ids);
  // Only the host side of the arena is reset: the device runs queued steps in order, so a step
  // still running is done with its buffers before the next one writes them.
  arena_.reset();
  Tensor logits, next_dev;
  PagedGraph* g = nullptr;
  // Under tensor parallelism a step runs op by op: its collectives are not captured (the
  // host-staged group's cannot be; capturing NCCL's is not built).
  if (decode && kv.table_width > 0 && device_.is_cuda() && ops::step_graphs_allowed() &&
      !tp_.active()) {
    std::unique_ptr<PagedGraph>& owned = paged_graphs_[num_seqs];
    if (!owned) owned = std::make_unique<PagedGraph>(device_);
    if (!owned->failed) g = owned.get();
  }
  if (g == nullptr) {
    paged_forward_body(rows, kv, logits, next_dev);
  } else {
    // A graph holds the addresses of the pool it was captured with.
    if (!g->graph.ready() || g->kv_key != kv.k[0].raw_data()) capture_paged_graph(*g, rows, kv);
    if (!g->failed) g->graph.launch();
    logits = g->logits;
    next_dev = g->next;
  }
  last_logits_ = logits;
  // The tokens again where nothing else writes (the arena and a graph's outputs are rewritten by
  // any later forward of this model): a following step takes its ids from here.
  if (!sampled_.defined() || sampled_.numel() < num_seqs)
    sampled_ = Tensor::empty(Shape{std::max<int64_t>(num_seqs, 64)}, DType::kI32, device_);
  ops::copy(next_dev, sampled_.slice(0, num_seqs));
  // The tokens go to the host slot the other uncollected step (if any) does not use.
  const int slot = next_slot_;
  if (!next_host_[slot].defined() || next_host_[slot].numel() < num_seqs) {
    next_host_[slot] =
        ops::staging_tensor(Shape{std::max<int64_t>(num_seqs, 64)}, DType::kI32, device_);
    next_marks_[slot] = std::make_shared<ops::StreamMark>(device_);
  }
  const Tensor out = next_host_[slot].slice(0, num_seqs);
  ops::copy_async(next_dev, out);
  next_marks_[slot]->record();
  in_flight_.push_back({out, next_marks_[slot]});
  next_slot_ ^= 1;
}

void Model::mirror_paged_steps(PagedKV& kv) {
  MOEX_CHECK(tp_.active() && tp_.rank() != 0,
             "mirror_paged_steps: for the tensor-parallel ranks other than 0");
  PagedStepMessage step;
  std::vector<int32_t> next;
  auto collect_oldest = [&] {
    next.resize(static_cast<size_t>(in_flight_.front().next_host.numel()));
    collect_paged(next.data());
  };
  try {
    while (receive_paged_step(*tp_.group, step)) {
      launch_paged(step.ids.data(), step.seqs, kv,
                   step.sampling.empty() ? nullptr : step.sampling.data(), step.ids_follow_last);
      // The last step stays in flight: the next one's ids may follow it on the device.
      while (in_flight_.size() > 1) collect_oldest();
    }
    while (!in_flight_.empty()) collect_oldest();
  } catch (const std::exception& e) {
    MOEX_LOG(kError, "tensor-parallel serving step failed on tp rank ", tp_.rank(), ": ", e.what());
    dist::Communicator::abort_job(1);
  }
}

void Model::end_mirrored_steps() {
  if (tp_.active() && tp_.rank() == 0) send_paged_end(*tp_.group);
}

void Model::collect_paged(int32_t* next) {
  MOEX_CHECK(!in_flight_.empty(), "collect_paged: no step in flight");
  const InFlightStep step = in_flight_.front();
  in_flight_.pop_front();
  const auto start = SteadyClock::now();
  step.copied->wait();
  host_times_.wait_ms += ms_since(start);
  std::copy(step.next_host.data<int32_t>(), step.next_host.data<int32_t>() + step.next_host.numel(),
            next);
}

std::vector<std::pair<int, MoEStats>> Model::moe_stats() const {
  std::vector<std::pair<int, MoEStats>> out;
  for (size_t i = 0; i < blocks_.size(); ++i)
    if (blocks_[i]->ffn().is_moe())
      out.emplace_back(static_cast<int>(i), blocks_[i]->ffn().stats());
  return out;
}

size_t Model::moe_kept_bytes() const {
  size_t sum = 0;
  for (const auto& block : blocks_) sum += block->ffn().moe_kept_bytes();
  return sum;
}

moe::ExchangeStats Model::exchange_stats() const {
  moe::ExchangeStats sum;
  for (const auto& block : blocks_) sum += block->ffn().exchange_stats();
  return sum;
}

}  // namespace moex::model
