#include "train/zero_partition.h"

#include <algorithm>

#include "core/error.h"
#include "ops/collective.h"
#include "ops/elementwise.h"

namespace moex::train {

namespace {

// A staging buffer of n f32 elements on `like`'s device.
Tensor staging(int64_t n, const Tensor& like) {
  return Tensor::empty(Shape{n}, DType::kF32, like.device());
}

}  // namespace

ZeroPartition::ZeroPartition(std::vector<FlatRange> runs, dist::Communicator& group, int64_t tile,
                             dist::DeviceGroup* device_group)
    : runs_(std::move(runs)), group_(&group), device_group_(device_group), tile_(tile) {
  MOEX_CHECK(tile_ >= 1, "ZeroPartition: tile must be >= 1, got ", tile_);
  MOEX_CHECK(device_group == nullptr ||
                 (device_group->size() == group.size() && device_group->rank() == group.rank()),
             "ZeroPartition: the device group must hold the group's ranks");
  for (FlatRange& r : runs_) {
    r.pos = size_;
    size_ += r.count;
  }
  const int64_t g = group.size();
  shard_ = (size_ + g - 1) / g;
  const int64_t begin = shard_begin(group.rank());
  for_each_piece(begin, begin + shard_, [&](const FlatRange& piece) {
    for (int64_t done = 0; done < piece.count; done += tile_)
      step_pieces_.push_back(
          {piece.flat + done, std::min(tile_, piece.count - done), piece.pos + done});
  });
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

void ZeroPartition::pack(const Tensor& flat, int64_t begin, int64_t n, const Tensor& buf) const {
  ops::zero(buf.slice(0, n));
  for_each_piece(begin, begin + n, [&](const FlatRange& p) {
    ops::copy(flat.slice(p.flat, p.flat + p.count), buf.slice(p.pos, p.pos + p.count));
  });
}

void ZeroPartition::unpack(const Tensor& buf, int64_t begin, int64_t n, const Tensor& flat) const {
  for_each_piece(begin, begin + n, [&](const FlatRange& p) {
    ops::copy(buf.slice(p.pos, p.pos + p.count), flat.slice(p.flat, p.flat + p.count));
  });
}

void ZeroPartition::reduce_scatter_sum(const Tensor& send, const Tensor& recv) const {
  if (group_->size() == 1) return ops::copy(send, recv);
  if (send.device().is_cpu()) {
    group_->reduce_scatter_sum(send.data<float>(), recv.data<float>(), recv.numel());
    return;
  }
  MOEX_CHECK(device_group_ != nullptr, "ZeroPartition: GPU buffers need the device group");
  ops::reduce_scatter_sum(send, recv, *device_group_);
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

void ZeroPartition::reduce_scatter(const Tensor& flat) const {
  const int g = group_->size(), rank = group_->rank();
  if (g == 1) return;
  const int64_t len = comm_tile();
  const Tensor send = staging(g * len, flat), recv = staging(len, flat);  // [g, len], [len]
  for (int64_t t = 0; t < shard_; t += len) {
    const int64_t n = std::min(len, shard_ - t);
    for (int p = 0; p < g; ++p) pack(flat, shard_begin(p) + t, n, send.slice(p * n, (p + 1) * n));
    reduce_scatter_sum(send.slice(0, g * n), recv.slice(0, n));
    unpack(recv, shard_begin(rank) + t, n, flat);
  }
}

void ZeroPartition::all_gather(const Tensor& flat) const {
  const int g = group_->size(), rank = group_->rank();
  if (g == 1) return;
  const int64_t len = comm_tile();
  const Tensor send = staging(len, flat), recv = staging(g * len, flat);  // [len], [g, len]
  for (int64_t t = 0; t < shard_; t += len) {
    const int64_t n = std::min(len, shard_ - t);
    pack(flat, shard_begin(rank) + t, n, send);
    all_gather_blocks(send.slice(0, n), recv.slice(0, g * n));
    for (int p = 0; p < g; ++p)
      if (p != rank) unpack(recv.slice(p * n, (p + 1) * n), shard_begin(p) + t, n, flat);
  }
}

void ZeroPartition::gather_shards(const Tensor& shard, const Tensor& flat) const {
  const int g = group_->size();
  const int64_t len = comm_tile();
  const Tensor recv = staging(g * len, flat);  // [g, len]
  // A bf16 shard (moments) is widened one tile at a time into f32 [len].
  const Tensor widened = shard.dtype() == DType::kF32 ? Tensor() : staging(len, shard);
  for (int64_t t = 0; t < shard_; t += len) {
    const int64_t n = std::min(len, shard_ - t);
    Tensor send = shard.slice(t, t + n);
    if (widened.defined()) {
      ops::copy(send, widened.slice(0, n));
      send = widened.slice(0, n);
    }
    all_gather_blocks(send, recv.slice(0, g * n));
    for (int p = 0; p < g; ++p) unpack(recv.slice(p * n, (p + 1) * n), shard_begin(p) + t, n, flat);
  }
}

void ZeroPartition::take_shard(const Tensor& flat, const Tensor& shard) const {
  pack(flat, shard_begin(group_->rank()), shard_, shard);
}

}  // namespace moex::train
