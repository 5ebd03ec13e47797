// ParallelLayout (dist/parallel_layout.h): the rank mapping, checked by its properties and by the
// worked example of docs/parallelism.md, and one clear error per bad or not-yet-built option.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <utility>

#include "core/error.h"
#include "dist/parallel_layout.h"

namespace moex::dist {
namespace {

// The message of the error make() throws, or "" when it does not.
std::string error_of(int world, const ParallelConfig& config) {
  try {
    ParallelLayout::make(world, 0, config, "run.json");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(ParallelLayout, EveryRankGetsItsOwnPlaceInTheGroups) {
  for (int world : {1, 2, 4, 8, 12}) {
    for (int ep = 1; ep <= world; ++ep) {
      if (world % ep != 0) continue;
      ParallelConfig config;
      config.ep = ep;
      std::set<std::pair<int, int>> places;  // (edp_rank, ep_rank): one per rank
      for (int rank = 0; rank < world; ++rank) {
        const ParallelLayout l = ParallelLayout::make(world, rank, config, "run.json");
        EXPECT_EQ(l.dp, world);
        EXPECT_EQ(l.edp * l.ep, l.dp);
        EXPECT_EQ(l.dp_rank, rank);  // tp = 1
        EXPECT_LT(l.ep_rank, ep);
        EXPECT_LT(l.edp_rank, l.edp);
        // Expert groups are consecutive ranks: ep group k is ranks k*ep .. k*ep + ep - 1.
        EXPECT_EQ(l.edp_rank, rank / ep);
        places.insert({l.edp_rank, l.ep_rank});
      }
      EXPECT_EQ(static_cast<int>(places.size()), world) << "world " << world << " ep " << ep;
    }
  }
}

// docs/parallelism.md's example, worked out by hand there: 8 ranks, tp 2, ep 2 (dp 4, edp 2).
TEST(ParallelLayout, MappingMatchesTheDocumentedExample) {
  const int tp_rank[] = {0, 1, 0, 1, 0, 1, 0, 1};
  const int dp_rank[] = {0, 0, 1, 1, 2, 2, 3, 3};
  const int ep_rank[] = {0, 0, 1, 1, 0, 0, 1, 1};
  const int edp_rank[] = {0, 0, 0, 0, 1, 1, 1, 1};
  for (int rank = 0; rank < 8; ++rank) {
    const ParallelLayout l = ParallelLayout::map(8, rank, 2, 2);
    EXPECT_EQ(l.dp, 4);
    EXPECT_EQ(l.edp, 2);
    EXPECT_EQ(l.tp_rank, tp_rank[rank]) << "rank " << rank;
    EXPECT_EQ(l.dp_rank, dp_rank[rank]) << "rank " << rank;
    EXPECT_EQ(l.ep_rank, ep_rank[rank]) << "rank " << rank;
    EXPECT_EQ(l.edp_rank, edp_rank[rank]) << "rank " << rank;
  }
  EXPECT_THROW(ParallelLayout::map(8, 0, 3, 1), Error);
  EXPECT_THROW(ParallelLayout::map(8, 0, 2, 3), Error);
}

TEST(ParallelLayout, DefaultIsPureDataParallel) {
  const ParallelLayout l = ParallelLayout::make(4, 3, ParallelConfig(), "run.json");
  EXPECT_EQ(l.tp, 1);
  EXPECT_EQ(l.dp, 4);
  EXPECT_EQ(l.ep, 1);
  EXPECT_EQ(l.edp, 4);
  EXPECT_EQ(l.dp_rank, 3);
  EXPECT_EQ(l.edp_rank, 3);
  EXPECT_EQ(l.ep_rank, 0);
}

TEST(ParallelLayout, BadSizesGiveOneClearError) {
  ParallelConfig c;
  c.ep = 3;
  EXPECT_NE(error_of(4, c).find("run.json: parallel.ep: 3 must be >= 1 and divide dp"),
            std::string::npos)
      << error_of(4, c);
  c.ep = 4;  // divides nothing of a 2-rank world
  EXPECT_NE(error_of(2, c).find("parallel.ep: 4"), std::string::npos) << error_of(2, c);
  c = ParallelConfig();
  c.tp = 4;
  EXPECT_NE(error_of(6, c).find("run.json: parallel.tp: 4 must be >= 1 and divide the number of "
                                "ranks (6)"),
            std::string::npos)
      << error_of(6, c);
  c.tp = 0;
  EXPECT_NE(error_of(2, c).find("parallel.tp"), std::string::npos);
}

TEST(ParallelLayout, ZeroStagesOneAndTwoAreAccepted) {
  for (const int64_t stage : {1, 2}) {
    ParallelConfig c;
    c.ep = 2;
    c.zero_stage = stage;
    EXPECT_EQ(error_of(4, c), "") << "stage " << stage;
  }
}

TEST(ParallelLayout, OffloadAndDtdNeedTheirLayouts) {
  ParallelConfig c;
  c.offload = true;  // several ranks: each steps its ZeRO shard on the host
  EXPECT_NE(error_of(4, c).find("run.json: parallel.offload: on several ranks ZeRO-Offload needs "
                                "parallel.zero_stage 1 or 2"),
            std::string::npos)
      << error_of(4, c);
  EXPECT_EQ(error_of(1, c), "");
  c.zero_stage = 1;
  EXPECT_EQ(error_of(4, c), "");
  c = ParallelConfig();
  c.dtd = true;  // needs tp > 1 and ep > 1
  EXPECT_NE(error_of(4, c).find("run.json: parallel.dtd: Duplicate Token Dropping needs tp > 1 and "
                                "ep > 1"),
            std::string::npos)
      << error_of(4, c);
  c.tp = 2;
  c.ep = 2;
  EXPECT_EQ(error_of(4, c), "");
}

// CAC is built (docs/parallelism.md); the config reader checks what it needs.
TEST(ParallelLayout, CacIsAccepted) {
  ParallelConfig c;
  c.ep = 2;
  c.cac = true;
  EXPECT_EQ(error_of(4, c), "");
}

}  // namespace
}  // namespace moex::dist
