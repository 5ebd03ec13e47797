// Run under mpirun with 2 and 4 ranks: ZeroPartition's collectives on a buffer with gaps between
// its runs, a domain that the ranks do not divide evenly and tiles that do not divide the shard.
// Values encode where they came from (rank and position), so each element proves its source.
#include "train/zero_partition.h"

#include <gtest/gtest.h>

namespace moex::train {
namespace {

// Flat buffer [100] with runs [3, 13), [20, 27), [50, 80): domain of 47 elements.
constexpr int64_t kFlat = 100;
const std::vector<FlatRange> kRuns = {{3, 10, 0}, {20, 7, 0}, {50, 30, 0}};
constexpr int64_t kPartTile = 5;

// Domain position of flat element i, or -1 outside the runs (worked out from kRuns by hand).
int64_t domain_pos(int64_t i) {
  if (i >= 3 && i < 13) return i - 3;
  if (i >= 20 && i < 27) return 10 + i - 20;
  if (i >= 50 && i < 80) return 17 + i - 50;
  return -1;
}

// A host vector as a tensor (the partition's buffers).
Tensor host(std::vector<float>& v) {
  return Tensor::from_external(v.data(), Shape{static_cast<int64_t>(v.size())}, DType::kF32,
                               Device::cpu());
}

TEST(ZeroPartition, ShardsCoverTheDomainOnceInBoundedPieces) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kRuns, world, kPartTile);
  const int64_t g = world.size();
  EXPECT_EQ(part.domain_size(), 47);
  EXPECT_EQ(part.shard_size(), (47 + g - 1) / g);
  // Each rank marks the flat elements its pieces step; summed over ranks every domain element
  // must be marked once and nothing else.
  std::vector<double> marks(kFlat, 0.0);
  for (const FlatRange& p : part.step_pieces()) {
    EXPECT_LE(p.count, kPartTile);
    for (int64_t k = 0; k < p.count; ++k) {
      marks[p.flat + k] += 1;
      EXPECT_EQ(domain_pos(p.flat + k), part.shard_begin(world.rank()) + p.pos + k);
    }
  }
  world.all_reduce_sum(marks.data(), kFlat);
  for (int64_t i = 0; i < kFlat; ++i) EXPECT_EQ(marks[i], domain_pos(i) >= 0 ? 1 : 0) << i;
}

TEST(ZeroPartition, ReduceScatterSumsOnlyThisRanksShard) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kRuns, world, kPartTile);
  const int64_t g = world.size(), rank = world.rank(), s = part.shard_size();
  std::vector<float> flat(kFlat);
  for (int64_t i = 0; i < kFlat; ++i) flat[i] = static_cast<float>((rank + 1) * (i + 1));
  part.reduce_scatter(host(flat));
  const float all_ranks = static_cast<float>(g * (g + 1) / 2);
  for (int64_t i = 0; i < kFlat; ++i) {
    const int64_t d = domain_pos(i);
    const bool mine = d >= 0 && d / s == rank;
    EXPECT_EQ(flat[i], (mine ? all_ranks : rank + 1) * static_cast<float>(i + 1)) << i;
  }
}

TEST(ZeroPartition, AllGatherTakesEachElementFromItsOwner) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kRuns, world, kPartTile);
  const int64_t rank = world.rank(), s = part.shard_size();
  std::vector<float> flat(kFlat);
  for (int64_t i = 0; i < kFlat; ++i) flat[i] = static_cast<float>(1000 * rank + i);
  part.all_gather(host(flat));
  for (int64_t i = 0; i < kFlat; ++i) {
    const int64_t d = domain_pos(i);
    const int64_t owner = d >= 0 ? d / s : rank;  // outside the runs: left alone
    EXPECT_EQ(flat[i], static_cast<float>(1000 * owner + i)) << i;
  }
}

TEST(ZeroPartition, ShardsGatherIntoTheFlatLayoutAndBack) {
  dist::Communicator& world = dist::Communicator::world();
  const ZeroPartition part(kRuns, world, kPartTile);
  const int64_t rank = world.rank(), s = part.shard_size();
  std::vector<float> shard(static_cast<size_t>(s)), flat(kFlat, -1.0f);
  for (int64_t k = 0; k < s; ++k) shard[k] = static_cast<float>(1000 * rank + k);
  part.gather_shards(host(shard), host(flat));
  for (int64_t i = 0; i < kFlat; ++i) {
    const int64_t d = domain_pos(i);
    EXPECT_EQ(flat[i], d >= 0 ? static_cast<float>(1000 * (d / s) + d % s) : -1.0f) << i;
  }
  std::vector<float> back(static_cast<size_t>(s), -1.0f);
  part.take_shard(host(flat), host(back));
  for (int64_t k = 0; k < s; ++k) {
    const bool padding = rank * s + k >= part.domain_size();
    EXPECT_EQ(back[k], padding ? 0.0f : shard[k]) << k;
  }
}

}  // namespace
}  // namespace moex::train
