// Run under mpirun with 2 and 4 ranks: ZeroPartition's collectives on a buffer with gaps between
// its runs, buckets (one of them empty) that the ranks do not divide evenly and tiles that do not
// divide the slices. Values encode where they came from (rank and position), so each element
// proves its source.
#include "train/zero_partition.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace moex::train {
namespace {

// Flat buffer [100] with runs [3, 13), [20, 27) in bucket 0, none in bucket 1, [50, 80) in
// bucket 2: a domain of 47 elements, buckets of 17, 0 and 30.
constexpr int64_t kFlat = 100;
const std::vector<std::vector<FlatRange>> kBuckets = {{{3, 10, 0}, {20, 7, 0}}, {}, {{50, 30, 0}}};
constexpr int64_t kPartTile = 5;

// Domain position of flat element i, or -1 outside the runs (worked out from kBuckets by hand).
int64_t domain_pos(int64_t i) {
  if (i >= 3 && i < 13) return i - 3;
  if (i >= 20 && i < 27) return 10 + i - 20;
  if (i >= 50 && i < 80) return 17 + i - 50;
  return -1;
}

// The rank owning domain element d in a group of g, and its place in that rank's shard: bucket 0
// (domain [0, 17)) is cut into g slices of ceil(17 / g), bucket 2 (domain [17, 47)) into slices
// of ceil(30 / g) that follow bucket 0's slice in every shard.
struct Place {
  int64_t owner = 0, shard_pos = 0;
};
Place place(int64_t d, int64_t g) {
  const int64_t s0 = (17 + g - 1) / g, s2 = (30 + g - 1) / g;
  if (d < 17) return {d / s0, d % s0};
  return {(d - 17) / s2, s0 + (d - 17) % s2};
}

int64_t shard_size(int64_t g) {
  return (17 + g - 1) / g + (30 + g - 1) / g;
}

// A host vector as a tensor (the partition's buffers).
Tensor host(std::vector<float>& v) {
  return Tensor::from_external(v.data(), Shape{static_cast<int64_t>(v.size())}, DType::kF32,
                               Device::cpu());
}

TEST(ZeroPartition, ShardsCoverTheDomainOnceInBoundedPieces) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kBuckets, world, kPartTile);
  const int64_t g = world.size();
  EXPECT_EQ(part.domain_size(), 47);
  EXPECT_EQ(part.shard_size(), shard_size(g));
  // Each rank marks the flat elements its pieces step; summed over ranks every domain element
  // must be marked once and nothing else.
  std::vector<double> marks(kFlat, 0.0);
  for (const FlatRange& p : part.step_pieces()) {
    EXPECT_LE(p.count, kPartTile);
    for (int64_t k = 0; k < p.count; ++k) {
      marks[p.flat + k] += 1;
      const Place at = place(domain_pos(p.flat + k), g);
      EXPECT_EQ(at.owner, world.rank()) << p.flat + k;
      EXPECT_EQ(at.shard_pos, p.pos + k) << p.flat + k;
    }
  }
  world.all_reduce_sum(marks.data(), kFlat);
  for (int64_t i = 0; i < kFlat; ++i) EXPECT_EQ(marks[i], domain_pos(i) >= 0 ? 1 : 0) << i;
}

// A streamed bucket: its gradients in a buffer of their own that starts at a flat offset. The
// group's sums of this rank's slice are added to what the shard held; the other bucket's places
// and the padding stay as they were. With overlap the sums are added by the next bucket's call or
// by finish_reductions, and the gradients may be overwritten as soon as the call returns.
void expect_bucket_sums_in_shard(bool overlap) {
  dist::Communicator& world = dist::Communicator::world();
  ZeroPartition part(kBuckets, world, kPartTile, nullptr, overlap);
  const int64_t g = world.size(), rank = world.rank(), s = part.shard_size();
  std::vector<float> shard(static_cast<size_t>(s));
  for (int64_t k = 0; k < s; ++k) shard[k] = 0.5f * static_cast<float>(k + 1);
  const std::vector<float> before = shard;
  // Bucket 2 from flat element 48 on: [48, 82) holds its run [50, 80) and neighbours.
  std::vector<float> grads(34);
  for (int64_t j = 0; j < 34; ++j) grads[j] = static_cast<float>((rank + 1) * (48 + j + 1));
  part.reduce_scatter_bucket(1, host(grads), 48, host(shard));  // empty: nothing moves
  EXPECT_EQ(shard, before);
  part.reduce_scatter_bucket(2, host(grads), 48, host(shard));
  std::vector<float> want = before;
  const float all_ranks = static_cast<float>(g * (g + 1) / 2);
  for (int64_t i = 50; i < 80; ++i) {
    const Place at = place(domain_pos(i), g);
    if (at.owner == rank) want[at.shard_pos] += all_ranks * static_cast<float>(i + 1);
  }
  if (overlap) {
    EXPECT_EQ(shard, before) << "added before finish_reductions";
    std::fill(grads.begin(), grads.end(), -7.0f);  // the next block's gradients
    part.finish_reductions();
    // The staging: [g, s2] blocks and [s2] sums of the largest slice, s2 = ceil(30 / g).
    EXPECT_EQ(part.staging_bytes(), 4 * (g + 1) * ((30 + g - 1) / g));
  } else {
    EXPECT_EQ(part.staging_bytes(), 0);
  }
  EXPECT_EQ(shard, want);
  part.finish_reductions();  // nothing pending: a no-op
  EXPECT_EQ(shard, want);
}

TEST(ZeroPartition, ReduceScatterBucketAddsTheSlicesSumToTheShard) {
  expect_bucket_sums_in_shard(false);
}

TEST(ZeroPartition, OverlappedReduceScatterAddsTheSumsWhenFinished) {
  expect_bucket_sums_in_shard(true);
}

TEST(ZeroPartition, AllGatherTakesEachElementFromItsOwner) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kBuckets, world, kPartTile);
  const int64_t g = world.size(), rank = world.rank();
  std::vector<float> flat(kFlat);
  for (int64_t i = 0; i < kFlat; ++i) flat[i] = static_cast<float>(1000 * rank + i);
  part.all_gather(host(flat));
  for (int64_t i = 0; i < kFlat; ++i) {
    const int64_t d = domain_pos(i);
    const int64_t owner = d >= 0 ? place(d, g).owner : rank;  // outside the runs: left alone
    EXPECT_EQ(flat[i], static_cast<float>(1000 * owner + i)) << i;
  }
}

TEST(ZeroPartition, ShardsGatherIntoTheFlatLayoutAndBack) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kBuckets, world, kPartTile);
  const int64_t g = world.size(), rank = world.rank(), s = part.shard_size();
  std::vector<float> shard(static_cast<size_t>(s)), flat(kFlat, -1.0f);
  for (int64_t k = 0; k < s; ++k) shard[k] = static_cast<float>(1000 * rank + k);
  part.gather_shards(host(shard), host(flat));
  for (int64_t i = 0; i < kFlat; ++i) {
    const int64_t d = domain_pos(i);
    const Place at = d >= 0 ? place(d, g) : Place{};
    EXPECT_EQ(flat[i], d >= 0 ? static_cast<float>(1000 * at.owner + at.shard_pos) : -1.0f) << i;
  }
  // Back into a shard: the owned places come back, the slices' padding is zeroed.
  std::vector<bool> owned(static_cast<size_t>(s), false);
  for (int64_t d = 0; d < 47; ++d)
    if (place(d, g).owner == rank) owned[place(d, g).shard_pos] = true;
  std::vector<float> back(static_cast<size_t>(s), -1.0f);
  part.take_shard(host(flat), host(back));
  for (int64_t k = 0; k < s; ++k) EXPECT_EQ(back[k], owned[k] ? shard[k] : 0.0f) << k;
}

}  // namespace
}  // namespace moex::train
