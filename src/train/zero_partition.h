// ZeRO partition of one kind of parameter (docs/parallelism.md, "ZeRO"). The elements of a
// kind (non-expert or expert), read in the flat buffer's order, form a "domain" of N elements,
// cut into buckets (the model's gradient buckets: the embedding, each block, the head). Rank r of
// the kind's group (dp or edp, size g) owns the r-th of g equal slices of every bucket: bucket b
// of N_b elements from domain position B_b gives it [B_b + r·s_b, min(B_b + (r+1)·s_b, B_b +
// N_b)), s_b = ceil(N_b / g). Its shard [S], S = the sum of the s_b, holds its slices in bucket
// order (a slice's tail past its bucket is padding). Each rank keeps the Adam moments of its
// shard only and, under stage 2, the gradient sums of its shard only: a bucket's gradients are
// reduce-scattered as soon as backward has made them.
//
// The collectives move gradients, weights and moments in tiles of at most `tile` elements
// in all (the g blocks of one collective together), so their temporary buffers do not grow
// with the model (DeepSpeed-TED's tiled optimizer); the optimizer steps the shard in pieces of at
// most `tile` elements. Buffers on the CPU go through the group's MPI collectives, buffers on a
// GPU through its device group (the same ranks; dist/device_group.h).
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "dist/communicator.h"
#include "dist/device_group.h"
#include "ops/collective.h"

namespace moex::train {

// A contiguous range of the flat buffer: `count` elements from element `flat`; `pos` is where
// they start in the domain, or in this rank's shard for step pieces.
struct FlatRange {
  int64_t flat = 0;
  int64_t count = 0;
  int64_t pos = 0;
};

class ZeroPartition {
 public:
  // buckets: the kind's contiguous flat ranges, grouped by bucket, in buffer order (pos ignored;
  // a bucket may be empty); group: dp or edp; device_group: the same ranks on the GPU (needed for
  // GPU buffers when the group has several).
  // overlap (parallel.overlap_comm): reduce_scatter_bucket leaves its sums pending, so that on a
  // GPU they run beside the next block's backward (see there).
  ZeroPartition(const std::vector<std::vector<FlatRange>>& buckets, dist::Communicator& group,
                int64_t tile, dist::DeviceGroup* device_group = nullptr, bool overlap = false);

  int64_t domain_size() const { return size_; }  // N
  int64_t shard_size() const { return shard_; }  // S: every rank's shard, padding included
  // This rank's shard split at run boundaries and into pieces of at most `tile` elements; pos is
  // the offset in the shard. The optimizer steps each piece with one call.
  const std::vector<FlatRange>& step_pieces() const { return step_pieces_; }
  dist::Communicator& group() const { return *group_; }

  // The buffers are tensors on one device: the shard sums and staging f32, a bucket's gradients f32
  // or bf16 (widened as they are packed), all_gather's weights f32 or bf16.
  // grads: bucket b's part of a flat gradient buffer, from flat element `flat_begin` on (a model's
  // streamed bucket). shard [S] += this rank's slice of the bucket summed over the group.
  // With overlap the bucket is packed whole into staging this partition keeps ([g * s] and [s]
  // for the largest slice s: staging_bytes()), its reduce-scatters are queued detached, and their
  // sums are added to the shard by the next call or by finish_reductions(): until then `shard`
  // must stay as it is, and only the shard's slice of this bucket is pending.
  void reduce_scatter_bucket(int bucket, const Tensor& grads, int64_t flat_begin,
                             const Tensor& shard);
  // Adds the pending sums of the last reduce_scatter_bucket to the shard (queued after them).
  void finish_reductions();
  // Bytes of the overlap's staging (allocated with the first bucket, on its device).
  int64_t staging_bytes() const;
  // flat: the weights [total] (f32, or on a GPU bf16); every rank's shard goes to every rank.
  void all_gather(const Tensor& flat) const;
  // shard [S] (f32, or bf16 widened a tile at a time) on every rank -> flat [total] f32 (on the
  // shard's device or the host): the kind's elements of the whole group.
  void gather_shards(const Tensor& shard, const Tensor& flat) const;
  // flat [total] -> this rank's shard [S] (padding zeroed), both on one device.
  void take_shard(const Tensor& flat, const Tensor& shard) const;

 private:
  struct Bucket {
    int64_t begin = 0;  // domain position of its first element
    int64_t size = 0;   // N_b
    int64_t slice = 0;  // s_b: elements each rank owns, padding included
    int64_t shard = 0;  // where this rank's slice starts in its shard
  };
  // Calls fn(range) for the contiguous flat pieces of domain elements [begin, end) (clipped to N);
  // pos = the element's offset from `begin`.
  template <typename Fn>
  void for_each_piece(int64_t begin, int64_t end, Fn&& fn) const;
  // Calls fn(bucket, t, n) for the collective tiles of the shard: elements [t, t + n) of every
  // rank's slice of the bucket.
  template <typename Fn>
  void for_each_tile(Fn&& fn) const;
  // Domain elements [t, t + n) of rank p's slice of bucket b, clipped to the bucket: first and end.
  std::pair<int64_t, int64_t> slice_range(const Bucket& b, int p, int64_t t, int64_t n) const;
  // Copies rank p's slice elements [t, t + n) of bucket b from src (flat elements from
  // src_begin on) into buf [n] (zeros past the bucket), or back from buf into flat.
  void pack(const Tensor& src, int64_t src_begin, const Bucket& b, int p, int64_t t, int64_t n,
            const Tensor& buf) const;
  void unpack(const Tensor& buf, const Bucket& b, int p, int64_t t, int64_t n,
              const Tensor& flat) const;
  // The group's collectives on buffers of one device: send [g, n] -> recv [n] summed (on a GPU
  // detached when asked: the result says what to wait for), and send [n] -> recv [g, n].
  ops::PendingCollective reduce_scatter_sum(const Tensor& send, const Tensor& recv,
                                            bool detach) const;
  void all_gather_blocks(const Tensor& send, const Tensor& recv) const;
  // Elements per rank in one collective tile.
  int64_t comm_tile() const;
  int64_t largest_slice() const;  // the largest bucket's s_b

  std::vector<FlatRange> runs_;  // pos = start in the domain
  std::vector<Bucket> buckets_;
  dist::Communicator* group_;
  dist::DeviceGroup* device_group_;
  int64_t tile_;
  int64_t size_ = 0, shard_ = 0;
  std::vector<FlatRange> step_pieces_;
  // parallel.overlap_comm: the staging, and the last bucket's sums not yet added.
  bool overlap_ = false;
  Tensor overlap_send_, overlap_recv_;  // [g * s], [s]: s the largest slice
  struct PendingSums {
    ops::PendingCollective collective;  // the last of the bucket's reduce-scatters
    Tensor sums, shard;                 // [slice] each: overlap_recv_'s and the shard's
  };
  std::optional<PendingSums> pending_;
};

}  // namespace moex::train
