// Run under mpirun (2 and 4 ranks): settings that differ on any rank are refused on every rank
// with the same message, naming the first field that differs and both values; equal settings pass.
#include "dist/rank_agreement.h"

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "dist/communicator.h"

namespace moex::dist {
namespace {

nlohmann::json settings(int64_t steps, double lr) {
  return {{"config", {{"training", {{"steps", steps}, {"lr", lr}}}, {"layers", {1, 2, 3}}}},
          {"stop_after", 0}};
}

TEST(RankAgreement, EqualSettingsPassDifferentOnesFailEverywhere) {
  Communicator& world = Communicator::world();
  ASSERT_GE(world.size(), 2);
  EXPECT_NO_THROW(check_same_on_all_ranks(world, settings(20, 0.1), "run.json"));
  // The last rank runs other steps (and another lr, which comes later in key order).
  const bool odd_one = world.rank() == world.size() - 1;
  std::string message;
  try {
    check_same_on_all_ranks(world, settings(odd_one ? 10 : 20, odd_one ? 0.5 : 0.1), "run.json");
  } catch (const Error& e) {
    message = e.message();
  }
  EXPECT_EQ(message, "run.json: config.training.lr is 0.5 on rank " +
                         std::to_string(world.size() - 1) +
                         " and 0.1 on rank 0; every rank must run the same config and flags");
}

TEST(RankAgreement, FirstDifferenceNamesThePath) {
  EXPECT_TRUE(first_difference(settings(1, 2), settings(1, 2)).same);
  const JsonDifference d = first_difference(settings(1, 2), settings(3, 2));
  EXPECT_FALSE(d.same);
  EXPECT_EQ(d.path, "config.training.steps");
  nlohmann::json a = settings(1, 2), b = settings(1, 2);
  b["config"]["layers"][2] = 4;
  EXPECT_EQ(first_difference(a, b).path, "config.layers[2]");
  b = a;
  b["extra"] = true;
  EXPECT_EQ(first_difference(a, b).path, "extra");
}

}  // namespace
}  // namespace moex::dist
