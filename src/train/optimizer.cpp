#include "train/optimizer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>

#include "core/timer.h"
#include "model/model.h"
#include "ops/collective.h"
#include "ops/device.h"
#include "ops/elementwise.h"
#include "ops/step_graph.h"

namespace moex::train {
namespace {

// Every tensor of the buffer as a segment of the flat buffer, with its weight decay.
std::vector<ops::AdamWSegment> tensor_segments(const ParamBuffer& params, double weight_decay) {
  std::vector<ops::AdamWSegment> segments;
  for (int i = 0; i < params.size(); ++i) {
    const Tensor& t = params.tensor(i);
    ops::AdamWSegment s;
    s.offset = params.offset(i);
    s.count = t.numel();
    s.weight_decay = t.ndim() >= 2 ? static_cast<float>(weight_decay) : 0.0f;
    segments.push_back(s);
  }
  return segments;
}

// The parts of `segments` inside flat range `piece`, with offsets relative to its start.
std::vector<ops::AdamWSegment> segments_within(const std::vector<ops::AdamWSegment>& segments,
                                               const FlatRange& piece) {
  std::vector<ops::AdamWSegment> out;
  for (const ops::AdamWSegment& s : segments) {
    const int64_t lo = std::max(s.offset, piece.flat);
    const int64_t hi = std::min(s.offset + s.count, piece.flat + piece.count);
    if (lo < hi) out.push_back({lo - piece.flat, hi - lo, s.weight_decay});
  }
  return out;
}

Tensor zeros(const Shape& shape, const Device& device, DType dtype = DType::kF32) {
  Tensor z = Tensor::empty(shape, dtype, device);
  ops::zero(z);
  return z;
}

}  // namespace

AdamW::AdamW(const ParamBuffer& params, const OptimizerConfig& config, bool offload,
             int64_t offload_tile)
    : config_(config), offload_tile_(offload_tile) {
  MOEX_CHECK(offload_tile >= 1, "AdamW: the offload tile must hold >= 1 element, got ",
             offload_tile);
  MOEX_CHECK(!offload || params.flat().device().is_cpu() || params.flat().dtype() == DType::kBF16,
             "AdamW: offload steps an fp32 master on the host or a bf16 one on the GPU; this "
             "model keeps an fp32 master on the GPU (build it with offload)");
  const Device state = offload ? Device::cpu() : params.flat().device();
  exp_avg_ = zeros(params.flat().shape(), state, config_.moments_dtype);
  exp_avg_sq_ = zeros(params.flat().shape(), state, config_.moments_dtype);
  segments_ = std::make_unique<ops::AdamWSegments>(tensor_segments(params, config_.weight_decay),
                                                   params.flat().device());
}

AdamW::AdamW(model::Model& model, const OptimizerConfig& config, const ZeroConfig& zero)
    : config_(config), zero_(zero) {
  MOEX_CHECK(zero.stage == 1 || zero.stage == 2, "AdamW: ZeRO stage ", zero.stage,
             " is not built (1 or 2)");
  MOEX_CHECK(zero.dp != nullptr && zero.edp != nullptr, "AdamW: ZeRO needs the dp and edp groups");
  const ParamBuffer& params = model.params();
  flat_size_ = params.flat().numel();
  const std::vector<ops::AdamWSegment> segments = tensor_segments(params, config_.weight_decay);
  // Per kind and gradient bucket: runs of neighbouring tensors of the kind with no padding between
  // them (a streamed bucket's padding holds arbitrary values, so it is kept out of the shards).
  // The rule-updated entries (selection biases) are left out: no step changes them, and every
  // rank's rule gives them the same values, which an all-gather must not overwrite.
  std::vector<bool> rule(static_cast<size_t>(params.size()), false);
  for (int i : model.rule_params()) rule[static_cast<size_t>(i)] = true;
  const std::vector<model::EntryRange>& buckets = model.gradient_buckets();
  std::array<std::vector<std::vector<FlatRange>>, 2> runs;
  for (const model::EntryRange& bucket : buckets) {
    bucket_flat_begin_.push_back(params.offset(bucket.first));
    for (auto& kind : runs) kind.emplace_back();
    for (int i = bucket.first; i <= bucket.last; ++i) {
      if (rule[static_cast<size_t>(i)]) continue;
      const ops::AdamWSegment& s = segments[static_cast<size_t>(i)];
      std::vector<FlatRange>& r = runs[model.is_expert_param(i)].back();
      if (!r.empty() && r.back().flat + r.back().count == s.offset)  // no padding between
        r.back().count += s.count;
      else
        r.push_back({s.offset, s.count, 0});
    }
  }
  int64_t state_size = 0;
  for (int kind = 0; kind < 2; ++kind) {
    dist::Communicator& group = kind == 0 ? *zero.dp : *zero.edp;
    partitions_[kind] = std::make_unique<ZeroPartition>(
        std::move(runs[kind]), group, zero.tile_elements, kind == 0 ? zero.gpu_dp : zero.gpu_edp,
        zero.overlap_comm && zero.stage == 2);
    state_offset_[kind] = state_size;
    state_size += partitions_[kind]->shard_size();
    for (const FlatRange& piece : partitions_[kind]->step_pieces()) {
      piece_segments_.push_back(std::make_unique<ops::AdamWSegments>(
          segments_within(segments, piece), params.flat().device()));
      zero_pieces_.push_back(
          {piece, state_offset_[kind] + piece.pos, piece_segments_.back().get()});
    }
  }
  const Shape state{std::max<int64_t>(state_size, 1)};
  // Offload: the moments on the host (and so is an unsharded master, in the model).
  const Device state_device = zero.offload ? Device::cpu() : params.flat().device();
  MOEX_CHECK(!zero.offload || model.device().is_cuda(), "AdamW: offload needs a GPU model");
  const bool gpu_bf16_master = model.device().is_cuda() && params.flat().dtype() == DType::kBF16;
  MOEX_CHECK(!zero.offload || zero.shard_master || model.master_on_host() || gpu_bf16_master,
             "AdamW: ZeRO-Offload without a sharded master needs the model's fp32 master on the "
             "host or a bf16 master on the GPU");
  exp_avg_ = zeros(state, state_device, config_.moments_dtype);
  exp_avg_sq_ = zeros(state, state_device, config_.moments_dtype);
  MOEX_CHECK(model.streams_gradients() == (zero.stage == 2), "AdamW: ZeRO stage ", zero.stage,
             model.streams_gradients() ? " with" : " without",
             " a model that streams its gradients (stage 2 needs one, stage 1 does not)");
  if (zero.stage == 2) grad_shard_ = zeros(state, model.device());
  if (zero.shard_master) {
    MOEX_CHECK(!(model.device().is_cuda() && model.master_on_host()),
               "AdamW: a sharded master needs a GPU model without a host master of its own");
    MOEX_CHECK(!zero.offload || params.flat().dtype() == DType::kBF16,
               "AdamW: an offloaded sharded master steps a model of bf16 weights");
    master_ = zeros(state, state_device);
    make_fp32_copy(model);
  }
  const model::TensorParallel& tp = model.tensor_parallel();
  if (tp.active()) {
    tp_group_ = tp.group;
    for (int i = 0; i < params.size(); ++i)
      if (params.split_dim(i) >= 0) {
        const ops::AdamWSegment& s = segments[static_cast<size_t>(i)];
        tp_split_ranges_.push_back({s.offset, s.count, 0});
      }
  }
}

ops::AdamWHyper AdamW::hyper(double lr, int64_t step, double norm) const {
  const double clip =
      (config_.grad_clip > 0 && norm > config_.grad_clip) ? config_.grad_clip / (norm + 1e-6) : 1.0;
  ops::AdamWHyper h;
  h.lr = lr;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.step = step;
  h.grad_scale = clip;
  return h;
}

double AdamW::step(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
                   const ParamBuffer* working_copy) {
  MOEX_CHECK(zero_.stage == 0, "AdamW::step(params, grads): use step(model) under ZeRO");
  const double norm = std::sqrt(ops::sum_of_squares(grads.flat()));  // fixed order: same bits
  apply(params, grads, lr, step, working_copy, norm);
  return norm;
}

void AdamW::apply(ParamBuffer& params, const ParamBuffer& grads, double lr, int64_t step,
                  const ParamBuffer* working_copy, double norm) {
  ops::adamw_step(params.flat(), working_copy ? working_copy->flat() : Tensor(), grads.flat(),
                  exp_avg_, exp_avg_sq_, *segments_, hyper(lr, step, norm));
  params.flat().mark_written();
}

double AdamW::step(model::Model& model, double lr, int64_t step) {
  // Overlapped stage 2: the last buckets' sums are still to be added.
  for (const auto& partition : partitions_)
    if (partition) partition->finish_reductions();
  // Moments on the host for a GPU model: ZeRO-Offload.
  if (model.device().is_cuda() && exp_avg_.device().is_cpu()) return offload_step(model, lr, step);
  if (zero_.stage > 0) return zero_step(model, lr, step);
  // A GPU model's fp32 master has a bf16 copy to rewrite; a bf16 master is what the kernels read.
  const bool copy = &model.compute_params() != &model.params();
  const ParamBuffer* working_copy = copy ? &model.compute_params() : nullptr;
  dist::Communicator* group = model.expert_group();
  const model::TensorParallel& tp = model.tensor_parallel();
  if (!model.split_over_ranks())
    return this->step(model.params(), model.grads(), lr, step, working_copy);
  // Squares of the tensors every rank holds whole, of this rank's experts summed over the ep
  // group, of this rank's tensor-parallel parts summed over the tp group, and of its slices of
  // its experts (expert tensor-slicing) summed over both.
  const ParamBuffer& grads = model.grads();
  enum { kWhole, kSplit, kExpert, kExpertSplit };
  double sums[4] = {0, 0, 0, 0};
  for (int i = 0; i < grads.size(); ++i) {
    const bool split = tp.active() && model.params().split_dim(i) >= 0;
    const int kind = model.is_expert_param(i) ? (split ? kExpertSplit : kExpert)
                     : split                  ? kSplit
                                              : kWhole;
    sums[kind] += ops::sum_of_squares(grads.tensor(i));
  }
  if (group != nullptr) group->all_reduce_sum(&sums[kExpert], 2);  // kExpert, kExpertSplit
  sums[kSplit] += sums[kExpertSplit];
  if (tp.active()) tp.group->all_reduce_sum(&sums[kSplit], 1);
  const double norm = std::sqrt(sums[kWhole] + sums[kExpert] + sums[kSplit]);
  apply(model.params(), grads, lr, step, working_copy, norm);
  return norm;
}

Tensor AdamW::piece_grads(const StepPiece& piece, const Tensor& grads, int64_t lo,
                          int64_t hi) const {
  if (!grad_shard_.defined()) return grads.slice(lo, hi);
  const int64_t at = piece.state + (lo - piece.range.flat);
  return grad_shard_.slice(at, at + (hi - lo));
}

double AdamW::zero_grad_norm(const Tensor& grads) const {
  // Every element of every kind lies in exactly one rank's shard of the dp group (the expert
  // shards of the edp groups of all ep ranks cover all experts once), so the squares of the
  // shards summed over dp are the global norm's. Under tp the dp group holds one tp rank's parts
  // of the split tensors: their squares are summed over tp as well.
  double sums[2] = {0, 0};  // everything, the tensor-parallel parts among it
  for (const StepPiece& piece : zero_pieces_) {
    const FlatRange& p = piece.range;
    sums[0] += ops::sum_of_squares(piece_grads(piece, grads, p.flat, p.flat + p.count));
    for (const FlatRange& r : tp_split_ranges_) {
      const int64_t lo = std::max(r.flat, p.flat);
      const int64_t hi = std::min(r.flat + r.count, p.flat + p.count);
      if (lo < hi) sums[1] += ops::sum_of_squares(piece_grads(piece, grads, lo, hi));
    }
  }
  zero_.dp->all_reduce_sum(sums, 2);
  double split = sums[1];
  if (tp_group_ != nullptr) tp_group_->all_reduce_sum(&split, 1);
  return std::sqrt(sums[0] - sums[1] + split);
}

double AdamW::zero_step(model::Model& model, double lr, int64_t step) {
  // The model's weights: its fp32 or bf16 master (stepped in place), or with a sharded master
  // (master_) the bf16 weights it computes with.
  const Tensor& weights = model.params().flat();
  // Stage 2: the gradients are the shard's sums (grad_shard_).
  const Tensor grads = grad_shard_.defined() ? Tensor() : model.grads().flat();
  auto view = [](const Tensor& t, int64_t begin, int64_t count) {
    return t.slice(begin, begin + count);
  };
  const double norm = zero_grad_norm(grads);
  const ops::AdamWHyper h = hyper(lr, step, norm);
  // A GPU model's fp32 master has a bf16 copy: the step writes the piece's copy too (the
  // all-gather below recasts every element).
  const bool copy = &model.compute_params() != &model.params();
  const Tensor compute = copy ? model.compute_params().flat() : Tensor();
  for (const StepPiece& piece : zero_pieces_) {
    const FlatRange& p = piece.range;
    const Tensor w = view(weights, p.flat, p.count);
    const Tensor g = piece_grads(piece, grads, p.flat, p.flat + p.count);
    const Tensor m = view(exp_avg_, piece.state, p.count),
                 v = view(exp_avg_sq_, piece.state, p.count);
    if (master_.defined()) {
      // The master shard steps; bf16 weights get it rounded to nearest in the same pass (the
      // working-copy path), fp32 weights a copy.
      const Tensor master = view(master_, piece.state, p.count);
      const bool bf16 = w.dtype() == DType::kBF16;
      ops::adamw_step(master, bf16 ? w : Tensor(), g, m, v, *piece.segments, h);
      if (!bf16) ops::copy(master, w);
    } else {
      ops::adamw_step(w, copy ? view(compute, p.flat, p.count) : Tensor(), g, m, v, *piece.segments,
                      h);
    }
  }
  if (grad_shard_.defined()) ops::zero(grad_shard_);  // the next step's sums start from zero
  for (int kind = 0; kind < 2; ++kind) partitions_[kind]->all_gather(weights);
  if (master_.defined()) refresh_fp32_copy(model);
  // A GPU model computes with its bf16 copy: every element changed, on one rank or another.
  if (copy) ops::copy(weights, compute);
  weights.mark_written();
  return norm;
}

double AdamW::offload_step(model::Model& model, double lr, int64_t step) {
  // The model's weights: an fp32 master on the pinned host, or bf16 on the GPU: a bf16 master
  // (it comes down and goes up tile by tile), or under ZeRO the bf16 weights of a sharded master
  // (master_, on the host).
  const Tensor& params = model.params().flat();
  const bool gpu_master = params.device().is_cuda(), sharded = master_.defined();
  // GPU: the whole buffer (f32 or bf16), or under ZeRO stage 2 the shard's sums (grad_shard_,
  // f32)
  const Tensor grads = grad_shard_.defined() ? Tensor() : model.grads().flat();
  const Tensor& compute = model.compute_params().flat();  // bf16, GPU
  const Device gpu = model.device();
  const bool zero = zero_.stage > 0;
  // A bf16 master (its tiles, under ZeRO this rank's shard pieces) is stepped in its download
  // buffer; the fp32 masters, the model's pinned one or a sharded one, stay on the host.
  const bool in_place = gpu_master && !sharded;
  // Without ZeRO the norm below is this rank's: every gradient must be here.
  MOEX_CHECK(zero || !model.split_over_ranks(),
             "AdamW: offload with tensor or expert parallelism needs ZeRO (parallel.zero_stage)");
  if (offload_tiles_.empty()) {
    // Without ZeRO the whole buffer in tiles; under ZeRO this rank's step pieces (each at most
    // tile_elements), whose moments sit at the kind's shard offset.
    if (zero) {
      offload_tiles_ = zero_pieces_;
    } else {
      const std::vector<ops::AdamWSegment> segments =
          tensor_segments(model.params(), config_.weight_decay);
      const int64_t total = params.numel();
      for (int64_t begin = 0; begin < total; begin += offload_tile_) {
        const FlatRange tile{begin, std::min(offload_tile_, total - begin), 0};
        piece_segments_.push_back(
            std::make_unique<ops::AdamWSegments>(segments_within(segments, tile), Device::cpu()));
        offload_tiles_.push_back({tile, begin, piece_segments_.back().get()});
      }
    }
    int64_t most = 1;
    for (const StepPiece& t : offload_tiles_) most = std::max(most, t.range.count);
    const DType grad_dtype = grads.defined() ? grads.dtype() : DType::kF32;
    for (int b = 0; b < 2; ++b) {
      grad_tiles_[b] = ops::staging_tensor(Shape{most}, grad_dtype, gpu);
      weight_tiles_[b] = ops::staging_tensor(Shape{most}, DType::kBF16, gpu);
    }
  }
  OffloadTimes& times = offload_times_;
  SteadyClock::time_point start = SteadyClock::now();
  // The norm where the gradients are: reductions on the GPU (under ZeRO over this rank's shards,
  // summed over the groups).
  const double norm = zero ? zero_grad_norm(grads) : std::sqrt(ops::sum_of_squares(grads));
  const ops::AdamWHyper h = hyper(lr, step, norm);
  times.norm_ms += ms_since(start);
  auto download = [&](size_t i) {
    const FlatRange& t = offload_tiles_[i].range;
    ops::copy_async(piece_grads(offload_tiles_[i], grads, t.flat, t.flat + t.count),
                    grad_tiles_[i % 2].slice(0, t.count));
    // A bf16 master's tile too; tile i - 2's upload from this buffer is queued before it.
    if (in_place)
      ops::copy_async(params.slice(t.flat, t.flat + t.count),
                      weight_tiles_[i % 2].slice(0, t.count));
  };
  // Tile i: its gradients came down while tile i - 1 was stepped; tile i + 1's come down while
  // the CPU steps tile i; its bf16 weights go up while tile i + 1 is stepped. The step writes them
  // into the tile's pinned upload buffer in its own pass over the fp32 master, the model's or the
  // sharded one (a bf16 master is stepped in that buffer). Under ZeRO with the model's fp32 master
  // the whole copy goes up below instead, once every shard is in.
  if (!offload_tiles_.empty()) download(0);  // a rank may own no elements of a tiny model
  for (size_t i = 0; i < offload_tiles_.size(); ++i) {
    const FlatRange& t = offload_tiles_[i].range;
    const int64_t end = t.flat + t.count, state = offload_tiles_[i].state;
    start = SteadyClock::now();
    ops::synchronize(gpu);  // tile i's gradients are here, tile i - 1's weights are up
    times.wait_ms += ms_since(start);
    if (i + 1 < offload_tiles_.size()) download(i + 1);
    start = SteadyClock::now();
    // Under ZeRO with the model's fp32 master on the host nothing goes up per tile (the whole copy
    // does below).
    const Tensor up = zero && !gpu_master ? Tensor() : weight_tiles_[i % 2].slice(0, t.count);
    const Tensor master = in_place  ? up
                          : sharded ? master_.slice(state, state + t.count)
                                    : params.slice(t.flat, end);
    ops::adamw_step(master, in_place ? Tensor() : up, grad_tiles_[i % 2].slice(0, t.count),
                    exp_avg_.slice(state, state + t.count),
                    exp_avg_sq_.slice(state, state + t.count), *offload_tiles_[i].segments, h);
    times.adam_ms += ms_since(start);
    if (up.defined()) ops::copy_async(up, compute.slice(t.flat, end));
  }
  start = SteadyClock::now();
  ops::synchronize(gpu);
  times.wait_ms += ms_since(start);
  if (grad_shard_.defined()) ops::zero(grad_shard_);  // every tile came down
  if (zero && gpu_master) {
    // Every rank's bf16 shards (a sharded master's rounded weights, or a bf16 master's own) over
    // its groups on the GPUs, as without offload.
    start = SteadyClock::now();
    for (int kind = 0; kind < 2; ++kind) partitions_[kind]->all_gather(params);
    if (sharded) refresh_fp32_copy(model);
    times.gather_ms += ms_since(start);
  } else if (zero) {
    start = SteadyClock::now();
    // Weights [begin, begin + n) up into the bf16 copy, cast on the host (threads) into pinned
    // tile b.
    auto upload = [&](int64_t begin, int64_t n, int64_t b) {
      const Tensor w = weight_tiles_[b].slice(0, n);
      ops::copy(params.slice(begin, begin + n), w);
      ops::copy_async(w, compute.slice(begin, begin + n));
    };
    // Every rank's updated shards over its groups (host buffers: MPI), then the whole bf16 copy
    // through the pinned tiles, two uploads in flight.
    for (int kind = 0; kind < 2; ++kind) partitions_[kind]->all_gather(params);
    const int64_t chunk = weight_tiles_[0].numel(), total = params.numel();
    for (int64_t begin = 0, i = 0; begin < total; begin += chunk, ++i) {
      const int64_t n = std::min(chunk, total - begin);
      if (i >= 2) ops::synchronize(gpu);  // chunk i - 2's upload has left this tile
      upload(begin, n, i % 2);
    }
    ops::synchronize(gpu);
    times.gather_ms += ms_since(start);
  }
  params.mark_written();
  return norm;
}

Tensor AdamW::shard_of(const Tensor& state, int kind) const {
  const int64_t begin = state_offset_[kind];
  return state.slice(begin, begin + partitions_[kind]->shard_size());
}

int64_t AdamW::gradient_bytes() const {
  int64_t bytes = grad_shard_.defined() ? static_cast<int64_t>(grad_shard_.nbytes()) : 0;
  for (const auto& partition : partitions_)
    if (partition) bytes += partition->staging_bytes();
  return bytes;
}

void AdamW::take(int bucket, const Tensor& grads) {
  MOEX_CHECK(grad_shard_.defined(), "AdamW::take: only ZeRO stage 2 takes streamed gradients");
  const int64_t begin = bucket_flat_begin_.at(static_cast<size_t>(bucket));
  for (int kind = 0; kind < 2; ++kind)
    partitions_[kind]->reduce_scatter_bucket(bucket, grads, begin, shard_of(grad_shard_, kind));
}

Tensor AdamW::gather_state(const Tensor& state) const {
  // bf16 moments are widened first: checkpoints hold fp32 whatever the optimizer keeps.
  if (zero_.stage == 0) {
    Tensor host = Tensor::empty(state.shape(), DType::kF32, Device::cpu());
    ops::copy(state, host);  // any device, bf16 widened
    return host;
  }
  // Gathered into the host a tile at a time: no whole-model buffer on the GPU.
  const Tensor flat = zeros(Shape{flat_size_}, Device::cpu());
  for (int kind = 0; kind < 2; ++kind)
    partitions_[kind]->gather_shards(shard_of(state, kind), flat);  // widened a tile at a time
  return flat;
}

void AdamW::load_state(Tensor& state, const Tensor& flat) {
  if (zero_.stage == 0) {
    ops::copy(flat, state);
  } else {
    MOEX_CHECK(flat.numel() == flat_size_, "AdamW: ", flat.numel(),
               " elements of state for a buffer of ", flat_size_);
    // Each shard is packed where flat is and moved whole: no whole-model buffer on the GPU.
    for (int kind = 0; kind < 2; ++kind) {
      const Tensor shard = shard_of(state, kind);
      if (flat.device() == state.device()) {
        partitions_[kind]->take_shard(flat, shard);
      } else {
        const Tensor packed = Tensor::empty(shard.shape(), DType::kF32, flat.device());
        partitions_[kind]->take_shard(flat, packed);
        ops::copy(packed, shard);
      }
    }
  }
  state.mark_written();
}

Tensor AdamW::gather_moment(bool second) const {
  return gather_state(second ? exp_avg_sq_ : exp_avg_);
}

void AdamW::load_moment(bool second, const Tensor& flat) {
  load_state(second ? exp_avg_sq_ : exp_avg_, flat);
}

Tensor AdamW::gather_master() const {
  if (!master_.defined()) return Tensor();
  const Tensor flat = gather_state(master_);
  for (const Fp32Entry& e : fp32_entries_)  // the biases are in no shard: their copy is the master
    if (e.rule)
      ops::copy(fp32_copy_.slice(e.at, e.at + e.numel), flat.slice(e.flat, e.flat + e.numel));
  return flat;
}

void AdamW::load_master(const Tensor& flat) {
  if (!master_.defined()) return;
  load_state(master_, flat);
  for (const Fp32Entry& e : fp32_entries_)
    ops::copy(flat.slice(e.flat, e.flat + e.numel), fp32_copy_.slice(e.at, e.at + e.numel));
  fp32_copy_.mark_written();
}

void AdamW::make_fp32_copy(model::Model& model) {
  // Routers first (their region is all-reduced after each step), then the selection biases.
  const ParamBuffer& params = model.params();
  for (const bool rule : {false, true})
    for (int i : rule ? model.rule_params() : model.router_params()) {
      const int64_t at =
          fp32_entries_.empty() ? 0 : fp32_entries_.back().at + fp32_entries_.back().numel;
      fp32_entries_.push_back({i, params.offset(i), params.tensor(i).numel(), at, rule});
      if (!rule) router_elements_ = at + params.tensor(i).numel();
    }
  const int64_t total =
      fp32_entries_.empty() ? 0 : fp32_entries_.back().at + fp32_entries_.back().numel;
  fp32_copy_ = zeros(Shape{std::max<int64_t>(total, 1)}, model.device());
  // This rank's router elements: where they are in its master shard and in the copy.
  for (const StepPiece& piece : zero_pieces_)
    for (const Fp32Entry& e : fp32_entries_) {
      const FlatRange& p = piece.range;
      const int64_t lo = std::max(e.flat, p.flat),
                    hi = std::min(e.flat + e.numel, p.flat + p.count);
      if (!e.rule && lo < hi)
        router_copies_.push_back({piece.state + (lo - p.flat), e.at + (lo - e.flat), hi - lo});
    }
  std::map<int, Tensor> views;
  for (const Fp32Entry& e : fp32_entries_)
    views[e.index] = fp32_copy_.slice(e.at, e.at + e.numel).view(params.tensor(e.index).shape());
  model.set_fp32_weights(views);
}

void AdamW::refresh_fp32_copy(model::Model& model) {
  // Each router element from the rank whose shard holds it: the others add zeros (the routers are
  // non-expert parameters, sharded over dp).
  if (router_elements_ > 0) {
    const Tensor routers = fp32_copy_.slice(0, router_elements_);
    ops::zero(routers);
    for (const RouterCopy& c : router_copies_)
      ops::copy(master_.slice(c.state, c.state + c.count), fp32_copy_.slice(c.at, c.at + c.count));
    if (routers.device().is_cpu())
      zero_.dp->all_reduce_sum(routers.data<float>(), routers.numel());
    else if (zero_.dp->size() > 1)
      ops::all_reduce_sum(routers, *zero_.gpu_dp);
  }
  fp32_copy_.mark_written();
  // The model's bf16 biases follow their fp32 masters (the copy), whatever was written there.
  for (const Fp32Entry& e : fp32_entries_)
    if (e.rule)
      ops::copy(fp32_copy_.slice(e.at, e.at + e.numel),
                model.params().tensor(e.index).view(Shape{e.numel}));
}

}  // namespace moex::train
