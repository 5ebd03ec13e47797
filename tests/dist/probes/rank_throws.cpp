// Expected to fail (tests/dist/rank_failure_test.sh): under mpirun, the last rank throws inside a
// test while every other rank waits in an all-reduce that the thrower never joins. The job must
// end with a non-zero status instead of hanging.
#include <gtest/gtest.h>

#include <stdexcept>

#include "dist/communicator.h"

TEST(RankFailure, OneRankThrowsWhileTheOthersWaitInACollective) {
  moex::dist::Communicator& world = moex::dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run with mpirun -np 2 (or more)";
  if (world.rank() == world.size() - 1) throw std::runtime_error("deliberate failure on one rank");
  float value = 1;
  world.all_reduce_sum(&value, 1);
}
