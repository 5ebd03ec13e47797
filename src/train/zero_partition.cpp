#include "train/zero_partition.h"

#include <algorithm>

#include "core/error.h"
#include "ops/collective.h"
#include "ops/elementwise.h"

namespace moex::train {

namespace {

// A staging buffer of n elements on `like`'s device (f32 unless given).
Tensor staging(int64_t n, const Tensor& like, DType dtype = DType::kF32) {
  return Tensor::empty(Shape{n}, dtype, like.device());
}

}  // namespace

ZeroPartition::ZeroPartition(const std::vector<std::vector<FlatRange>>& buckets,
                             dist::Communicator& group, int64_t tile,
                             dist::DeviceGroup* device_group, bool overlap)
    : group_(&group), device_group_(device_group), tile_(tile), overlap_(overlap) {
  MOEX_CHECK(tile_ >= 1, "ZeroPartition: tile must be >= 1, got ", tile_);
  MOEX_CHECK(device_group == nullptr ||
                 (device_group->size() == group.size() && device_group->rank() == group.rank()),
             "ZeroPartition: the device group must hold the group's ranks");
  const int64_t g = group.size();
  for (const std::vector<FlatRange>& runs : buckets) {
    Bucket b;
    b.begin = size_;
    for (FlatRange r : runs) {
      r.pos = size_;
      size_ += r.count;
      runs_.push_back(r);
    }
    b.size = size_ - b.begin;
    b.slice = (b.size + g - 1) / g;
    b.shard = shard_;
    shard_ += b.slice;
    buckets_.push_back(b);
  }
  const int rank = group.rank();
  for (const Bucket& b : buckets_) {
    const auto [first, end] = slice_range(b, rank, 0, b.slice);
    for_each_piece(first, end, [&](const FlatRange& piece) {
      for (int64_t done = 0; done < piece.count; done += tile_)
        step_pieces_.push_back(
            {piece.flat + done, std::min(tile_, piece.count - done), b.shard + piece.pos + done});
    });
  }
}

template <typename Fn>
void ZeroPartition::for_each_piece(int64_t begin, int64_t end, Fn&& fn) const {
  end = std::min(end, size_);
  // The first run that ends after `begin`.
  auto it = std::upper_bound(runs_.begin(), runs_.end(), begin,
                             [](int64_t v, const FlatRange& r) { return v < r.pos + r.count; });
  for (; it != runs_.end() && it->pos < end; ++it) {
    const int64_t lo = std::max(begin, it->pos), hi = std::min(end, it->pos + it->count);
    fn(FlatRange{it->flat + (lo - it->pos), hi - lo, lo - begin});
  }
}

template <typename Fn>
void ZeroPartition::for_each_tile(Fn&& fn) const {
  const int64_t len = comm_tile();
  for (const Bucket& b : buckets_)
    for (int64_t t = 0; t < b.slice; t += len) fn(b, t, std::min(len, b.slice - t));
}

std::pair<int64_t, int64_t> ZeroPartition::slice_range(const Bucket& b, int p, int64_t t,
                                                       int64_t n) const {
  const int64_t end = b.begin + b.size, first = std::min(end, b.begin + p * b.slice + t);
  return {first, std::min(end, first + n)};
}

void ZeroPartition::pack(const Tensor& src, int64_t src_begin, const Bucket& b, int p, int64_t t,
                         int64_t n, const Tensor& buf) const {
  ops::zero(buf.slice(0, n));
  const auto [first, end] = slice_range(b, p, t, n);
  for_each_piece(first, end, [&](const FlatRange& r) {
    const int64_t at = r.flat - src_begin;
    ops::copy(src.slice(at, at + r.count), buf.slice(r.pos, r.pos + r.count));
  });
}

void ZeroPartition::unpack(const Tensor& buf, const Bucket& b, int p, int64_t t, int64_t n,
                           const Tensor& flat) const {
  const auto [first, end] = slice_range(b, p, t, n);
  for_each_piece(first, end, [&](const FlatRange& r) {
    ops::copy(buf.slice(r.pos, r.pos + r.count), flat.slice(r.flat, r.flat + r.count));
  });
}

ops::PendingCollective ZeroPartition::reduce_scatter_sum(const Tensor& send, const Tensor& recv,
                                                         bool detach) const {
  if (group_->size() == 1) {
    ops::copy(send, recv);
  } else if (send.device().is_cpu()) {
    group_->reduce_scatter_sum(send.data<float>(), recv.data<float>(), recv.numel());
  } else {
    MOEX_CHECK(device_group_ != nullptr, "ZeroPartition: GPU buffers need the device group");
    if (detach) return ops::reduce_scatter_sum_detached(send, recv, *device_group_);
    ops::reduce_scatter_sum(send, recv, *device_group_);
  }
  return {};
}

void ZeroPartition::all_gather_blocks(const Tensor& send, const Tensor& recv) const {
  if (group_->size() == 1) return ops::copy(send, recv);
  if (send.device().is_cpu()) {
    group_->all_gather(send.data<float>(), recv.data<float>(), send.numel());
    return;
  }
  MOEX_CHECK(device_group_ != nullptr, "ZeroPartition: GPU buffers need the device group");
  ops::all_gather(send, recv, *device_group_);
}

int64_t ZeroPartition::comm_tile() const {
  return std::max<int64_t>(1, tile_ / group_->size());
}

void ZeroPartition::reduce_scatter_bucket(int bucket, const Tensor& grads, int64_t flat_begin,
                                          const Tensor& shard) {
  const Bucket& b = buckets_.at(static_cast<size_t>(bucket));
  finish_reductions();  // the bucket before (overlap): queued after this bucket's backward
  if (b.size == 0) return;
  const int g = group_->size();
  // A group of one has nothing to run beside the backward: its sums are copies, added at once.
  const bool overlap = overlap_ && g > 1;
  const int64_t len = std::min(comm_tile(), b.slice);
  // Without overlap one tile's staging, [g, len] and [len], serves every tile in turn. With it the
  // whole bucket is packed (tile t's blocks [g, n] at g * t, its sums [n] at t), so the model may
  // write the next block's gradients over `grads` while the collectives run.
  if (overlap && !overlap_send_.defined()) {
    overlap_send_ = staging(g * largest_slice(), grads);
    overlap_recv_ = staging(largest_slice(), grads);
  }
  const Tensor send = overlap ? overlap_send_ : staging(g * len, grads);
  const Tensor sums = overlap ? overlap_recv_.slice(0, b.slice) : staging(len, grads);
  PendingSums pending{{}, sums, shard.slice(b.shard, b.shard + b.slice)};
  for (int64_t t = 0; t < b.slice; t += len) {
    const int64_t n = std::min(len, b.slice - t), at = overlap ? t : 0;
    const Tensor tile_send = send.slice(g * at, g * (at + n)), tile_sums = sums.slice(at, at + n);
    for (int p = 0; p < g; ++p)
      pack(grads, flat_begin, b, p, t, n, tile_send.slice(p * n, (p + 1) * n));
    // One communicator's collectives finish in order: the last one's event covers them all.
    pending.collective = reduce_scatter_sum(tile_send, tile_sums, overlap);
    if (!overlap) ops::add_into(tile_sums, pending.shard.slice(t, t + n));
  }
  if (overlap) pending_ = pending;
}

void ZeroPartition::finish_reductions() {
  if (!pending_) return;
  ops::wait(pending_->collective);
  ops::add_into(pending_->sums, pending_->shard);
  pending_.reset();
}

int64_t ZeroPartition::largest_slice() const {
  int64_t largest = 0;
  for (const Bucket& b : buckets_) largest = std::max(largest, b.slice);
  return largest;
}

int64_t ZeroPartition::staging_bytes() const {
  const int64_t floats =
      overlap_ && group_->size() > 1 ? (group_->size() + 1) * largest_slice() : 0;
  return floats * static_cast<int64_t>(sizeof(float));
}

void ZeroPartition::all_gather(const Tensor& flat) const {
  const int g = group_->size(), rank = group_->rank();
  if (g == 1) return;
  const int64_t len = comm_tile();
  // [len], [g, len] of the weights' dtype (a GPU model's bf16 weights under a sharded master)
  const Tensor send = staging(len, flat, flat.dtype()), recv = staging(g * len, flat, flat.dtype());
  for_each_tile([&](const Bucket& b, int64_t t, int64_t n) {
    pack(flat, 0, b, rank, t, n, send);
    all_gather_blocks(send.slice(0, n), recv.slice(0, g * n));
    for (int p = 0; p < g; ++p)
      if (p != rank) unpack(recv.slice(p * n, (p + 1) * n), b, p, t, n, flat);
  });
}

void ZeroPartition::gather_shards(const Tensor& shard, const Tensor& flat) const {
  const int g = group_->size();
  const int64_t len = comm_tile();
  // [g, len] where the collective runs (the shard's device), and where flat is when that differs
  // (a GPU shard gathered into the host: one copy a tile).
  const Tensor recv = staging(g * len, shard);
  const bool moved = flat.device() != shard.device();
  const Tensor out = moved ? staging(g * len, flat) : recv;
  // A bf16 shard (moments) is widened one tile at a time into f32 [len].
  const Tensor widened = shard.dtype() == DType::kF32 ? Tensor() : staging(len, shard);
  for_each_tile([&](const Bucket& b, int64_t t, int64_t n) {
    Tensor send = shard.slice(b.shard + t, b.shard + t + n);
    if (widened.defined()) {
      ops::copy(send, widened.slice(0, n));
      send = widened.slice(0, n);
    }
    all_gather_blocks(send, recv.slice(0, g * n));
    if (moved) ops::copy(recv.slice(0, g * n), out.slice(0, g * n));
    for (int p = 0; p < g; ++p) unpack(out.slice(p * n, (p + 1) * n), b, p, t, n, flat);
  });
}

void ZeroPartition::take_shard(const Tensor& flat, const Tensor& shard) const {
  for (const Bucket& b : buckets_)
    pack(flat, 0, b, group_->rank(), 0, b.slice, shard.slice(b.shard, b.shard + b.slice));
}

}  // namespace moex::train
