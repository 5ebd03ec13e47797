#include "train/zero_partition.h"

#include <algorithm>

#include "core/error.h"

namespace moex::train {

ZeroPartition::ZeroPartition(std::vector<FlatRange> runs, dist::Communicator& group, int64_t tile)
    : runs_(std::move(runs)), group_(&group), tile_(tile) {
  MOEX_CHECK(tile_ >= 1, "ZeroPartition: tile must be >= 1, got ", tile_);
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

void ZeroPartition::pack(const float* flat, int64_t begin, int64_t n, float* buf) const {
  std::fill(buf, buf + n, 0.0f);
  for_each_piece(begin, begin + n, [&](const FlatRange& p) {
    std::copy(flat + p.flat, flat + p.flat + p.count, buf + p.pos);
  });
}

void ZeroPartition::unpack(const float* buf, int64_t begin, int64_t n, float* flat) const {
  for_each_piece(begin, begin + n, [&](const FlatRange& p) {
    std::copy(buf + p.pos, buf + p.pos + p.count, flat + p.flat);
  });
}

int64_t ZeroPartition::comm_tile() const {
  return std::max<int64_t>(1, tile_ / group_->size());
}

void ZeroPartition::reduce_scatter(float* flat) const {
  const int g = group_->size(), rank = group_->rank();
  if (g == 1) return;
  const int64_t len = comm_tile();
  std::vector<float> send(static_cast<size_t>(g * len)),
      recv(static_cast<size_t>(len));  // [g, len], [len]
  for (int64_t t = 0; t < shard_; t += len) {
    const int64_t n = std::min(len, shard_ - t);
    for (int p = 0; p < g; ++p) pack(flat, shard_begin(p) + t, n, send.data() + p * n);
    group_->reduce_scatter_sum(send.data(), recv.data(), n);
    unpack(recv.data(), shard_begin(rank) + t, n, flat);
  }
}

void ZeroPartition::all_gather(float* flat) const {
  const int g = group_->size(), rank = group_->rank();
  if (g == 1) return;
  const int64_t len = comm_tile();
  std::vector<float> send(static_cast<size_t>(len)),
      recv(static_cast<size_t>(g * len));  // [len], [g, len]
  for (int64_t t = 0; t < shard_; t += len) {
    const int64_t n = std::min(len, shard_ - t);
    pack(flat, shard_begin(rank) + t, n, send.data());
    group_->all_gather(send.data(), recv.data(), n);
    for (int p = 0; p < g; ++p)
      if (p != rank) unpack(recv.data() + p * n, shard_begin(p) + t, n, flat);
  }
}

void ZeroPartition::gather_shards(const float* shard, float* flat) const {
  const int g = group_->size();
  const int64_t len = comm_tile();
  std::vector<float> recv(static_cast<size_t>(g * len));  // [g, len]
  for (int64_t t = 0; t < shard_; t += len) {
    const int64_t n = std::min(len, shard_ - t);
    group_->all_gather(shard + t, recv.data(), n);
    for (int p = 0; p < g; ++p) unpack(recv.data() + p * n, shard_begin(p) + t, n, flat);
  }
}

void ZeroPartition::take_shard(const float* flat, float* shard) const {
  pack(flat, shard_begin(group_->rank()), shard_, shard);
}

}  // namespace moex::train
