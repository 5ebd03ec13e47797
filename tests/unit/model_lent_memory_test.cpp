// Where blocks keep activations inside the gradient buffer (model/lent_memory.h): each
// region lies below its block's own gradients and above the floor, no two meet, and the blocks
// whose rows fit get memory.
#include <gtest/gtest.h>

#include <vector>

#include "core/rng.h"
#include "model/lent_memory.h"

namespace moex::model {
namespace {

// What any plan must satisfy, checked pair by pair.
void expect_valid(const std::vector<LentRegion>& r, const std::vector<int64_t>& begin,
                  const std::vector<int64_t>& need, int64_t floor, int64_t align) {
  ASSERT_EQ(r.size(), begin.size());
  for (size_t l = 0; l < r.size(); ++l) {
    if (r[l].empty()) continue;
    EXPECT_GT(need[l], 0) << "block " << l << " keeps nothing but got memory";
    EXPECT_GE(r[l].end - r[l].begin, need[l]) << "block " << l;
    EXPECT_LE(r[l].end, begin[l]) << "block " << l << " reaches its own gradients";
    EXPECT_GE(r[l].begin, floor) << "block " << l;
    EXPECT_EQ(r[l].begin % align, 0) << "block " << l;
    for (size_t m = 0; m < l; ++m) {
      if (r[m].empty()) continue;
      EXPECT_TRUE(r[m].end <= r[l].begin || r[l].end <= r[m].begin)
          << "blocks " << m << " and " << l << " overlap";
    }
  }
}

TEST(LentRowsPlan, RowsSmallerThanABlockSitBelowTheirOwnBlock) {
  // Blocks of 1000 elements after an embedding of 300; every block keeps 640.
  const std::vector<int64_t> begin = {300, 1300, 2300, 3300}, need = {640, 640, 640, 640};
  const std::vector<LentRegion> r = plan_lent_regions(begin, need, 0, 64);
  expect_valid(r, begin, need, 0, 64);
  EXPECT_TRUE(r[0].empty());  // the embedding's 300 elements hold too few
  for (size_t l = 1; l < 4; ++l) {
    EXPECT_EQ(r[l].end, begin[l]) << l;
    EXPECT_EQ(r[l].begin, (begin[l] - 640) / 64 * 64) << l;
  }
}

TEST(LentRowsPlan, RowsLargerThanABlockStackDownward) {
  // Each block holds 1000 elements and keeps 1500: the regions stack from the top block's
  // gradients down, and the lowest blocks get none.
  const std::vector<int64_t> begin = {0, 1000, 2000, 3000, 4000},
                             need = {1500, 1500, 1500, 1500, 1500};
  const std::vector<LentRegion> r = plan_lent_regions(begin, need, 0, 1);
  expect_valid(r, begin, need, 0, 1);
  EXPECT_EQ(r[4].begin, 2500);
  EXPECT_EQ(r[4].end, 4000);
  EXPECT_EQ(r[3].begin, 1000);
  EXPECT_EQ(r[3].end, 2500);
  EXPECT_TRUE(r[2].empty());  // [-500, 1000) would cross the floor
  EXPECT_TRUE(r[1].empty());
  EXPECT_TRUE(r[0].empty());
}

TEST(LentRowsPlan, DenseBlocksAndTheFloorAreRespected) {
  // Blocks 0 and 2 are dense (keep nothing); a tied head puts the floor at block 0's gradients.
  const std::vector<int64_t> begin = {500, 1500, 2500, 3500}, need = {0, 800, 0, 800};
  const std::vector<LentRegion> r = plan_lent_regions(begin, need, 500, 100);
  expect_valid(r, begin, need, 500, 100);
  EXPECT_EQ(r[3].begin, 2700);  // inside block 2's gradients
  EXPECT_EQ(r[1].begin, 700);   // inside block 0's
  EXPECT_TRUE(r[0].empty());
  EXPECT_TRUE(r[2].empty());
}

TEST(LentRowsPlan, RandomLayoutsGiveValidPlans) {
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Rng rng(seed, 7);
    const int blocks = 1 + static_cast<int>(rng.next_u32() % 12);
    std::vector<int64_t> begin(blocks), need(blocks);
    int64_t at = rng.next_u32() % 5000;
    for (int l = 0; l < blocks; ++l) {
      begin[l] = at;
      at += 1 + rng.next_u32() % 4000;
      need[l] = rng.next_u32() % 3 == 0 ? 0 : 1 + rng.next_u32() % 6000;
    }
    const int64_t floor = rng.next_u32() % 2 == 0 ? 0 : begin[0];
    const int64_t align = int64_t{1} << (rng.next_u32() % 8);
    expect_valid(plan_lent_regions(begin, need, floor, align), begin, need, floor, align);
  }
}

// take_front carves aligned tensors off the front of lent memory, in place, and refuses what does
// not fit.
TEST(LentMemory, TakeFrontCarvesAlignedTensors) {
  Tensor lent = Tensor::zeros(Shape{1000}, DType::kF32);  // 4000 bytes
  char* base = static_cast<char*>(lent.raw_data());
  const Tensor a = take_front(lent, Shape{3, 10}, DType::kBF16);  // 60 bytes -> 256
  ASSERT_TRUE(a.defined());
  EXPECT_EQ(a.raw_data(), base);
  EXPECT_EQ(a.dtype(), DType::kBF16);
  EXPECT_EQ(a.shape(), (Shape{3, 10}));
  EXPECT_EQ(lent.raw_data(), base + 256);
  EXPECT_EQ(lent.numel(), 1000 - 64);
  EXPECT_EQ(lent_front_bytes(Shape{3, 10}, DType::kBF16), 256u);
  const Tensor too_big = take_front(lent, Shape{1000}, DType::kF32);  // 4000 > 3744 bytes left
  EXPECT_FALSE(too_big.defined());
  EXPECT_EQ(lent.raw_data(), base + 256) << "a refusal leaves the memory as it was";
  const Tensor b = take_front(lent, Shape{900}, DType::kF32);  // 3600 -> 3840 > 3744
  EXPECT_FALSE(b.defined());
  const Tensor c = take_front(lent, Shape{64, 14}, DType::kF32);  // 3584 bytes
  ASSERT_TRUE(c.defined());
  EXPECT_EQ(c.raw_data(), base + 256);
  EXPECT_EQ(lent.numel(), 1000 - 64 - 896);
}

}  // namespace
}  // namespace moex::model
