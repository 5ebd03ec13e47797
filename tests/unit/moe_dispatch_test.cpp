// Capacity and the dispatch plan: which token keeps which slot under each drop policy, written
// out by hand from DeepSpeed's rules; RTS statistics; dropless; argument checks.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "moe/dispatch_plan.h"
#include "moe/moe_config.h"

namespace moex::moe {
namespace {

DispatchPlan plan_for(const std::vector<int32_t>& idx, int k, int64_t e_count, int64_t capacity,
                      DropPolicy policy, const std::vector<double>& score = {}, uint64_t seed = 0,
                      bool dropless = false) {
  DispatchPlan plan;
  DispatchParams params;
  params.capacity = capacity;
  params.policy = policy;
  params.seed = seed;
  params.dropless = dropless;
  build_dispatch_plan<double>(idx.data(), score.empty() ? nullptr : score.data(),
                              static_cast<int64_t>(idx.size()) / k, e_count, k, params, &plan);
  return plan;
}

// row[] and gather[] are inverse maps; counts and offsets agree with them.
void check_consistent(const DispatchPlan& p) {
  int64_t kept = 0;
  for (size_t r = 0; r < p.slot.size(); ++r) {
    if (p.slot[r] < 0) {
      EXPECT_EQ(p.row[r], -1);
      continue;
    }
    ++kept;
    EXPECT_LT(p.slot[r], p.counts[p.expert[r]]);
    EXPECT_EQ(p.row[r], p.offsets[p.expert[r]] + p.slot[r]);
    EXPECT_EQ(p.gather[p.row[r]], static_cast<int32_t>(r));
  }
  EXPECT_EQ(kept, p.num_kept());
}

TEST(Capacity, FormulaTrainEvalAndMinimum) {
  MoEConfig c;
  c.num_experts = 8;
  c.top_k = 2;
  c.capacity_factor_train = 1.25f;
  c.capacity_factor_eval = 2.0f;
  c.min_capacity = 4;
  EXPECT_EQ(moe_capacity(100, c, true), 32);   // ceil(100/8*1.25*2) = ceil(31.25)
  EXPECT_EQ(moe_capacity(100, c, false), 50);  // the eval factor in eval mode
  EXPECT_EQ(moe_capacity(8, c, true), 4);      // ceil(2.5) = 3 < min_capacity
  c.top_k = 1;
  c.capacity_factor_train = 1.0f;
  c.min_capacity = 0;
  EXPECT_EQ(moe_capacity(64, c, true), 8);  // exact division stays exact
}

// Top-1, position: each expert keeps its first C tokens in token order.
TEST(DispatchPlan, PositionTop1ByHand) {
  // tokens:                 0  1  2  3  4  5
  const std::vector<int32_t> idx = {0, 0, 1, 0, 1, 1};
  const auto p = plan_for(idx, 1, 2, 2, DropPolicy::kPosition);
  EXPECT_EQ(p.slot, (std::vector<int32_t>{0, 1, 0, -1, 1, -1}));  // tokens 3 and 5 dropped
  EXPECT_EQ(p.row, (std::vector<int32_t>{0, 1, 2, -1, 3, -1}));
  EXPECT_EQ(p.load, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(p.counts, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(p.num_dropped, 2);
  check_consistent(p);
}

// Top-2, position: every first choice is placed before any second choice (DeepSpeed top2gating).
TEST(DispatchPlan, PositionTop2FirstChoicesFirst) {
  // token 0 -> (1st e1, 2nd e0), token 1 -> (e0, e2), token 2 -> (e0, e1); E = 3, C = 2.
  const std::vector<int32_t> idx = {1, 0, 0, 2, 0, 1};
  const auto p = plan_for(idx, 2, 3, 2, DropPolicy::kPosition);
  // Expert 0 sees token 0's second choice first in token order, but tokens 1 and 2 take its
  // two slots with their first choices, so token 0's second choice is the one dropped.
  EXPECT_EQ(p.slot, (std::vector<int32_t>{0, -1, 0, 0, 1, 1}));
  EXPECT_EQ(p.counts, (std::vector<int64_t>{2, 2, 1}));
  EXPECT_EQ(p.load, (std::vector<int64_t>{3, 2, 1}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 2, 4, 6}));  // padded [E, C]
  EXPECT_EQ(p.gather, (std::vector<int32_t>{2, 4, 0, 5, 3, -1}));
  check_consistent(p);
}

// Probs: each expert keeps its C highest scores; kept routes take slots in token order.
TEST(DispatchPlan, ProbsKeepsHighestScores) {
  const std::vector<int32_t> idx = {0, 0, 0, 1, 0};
  const std::vector<double> score = {0.5, 0.9, 0.6, 0.7, 0.95};
  const auto p = plan_for(idx, 1, 2, 2, DropPolicy::kProbs, score);
  EXPECT_EQ(p.slot, (std::vector<int32_t>{-1, 0, -1, 0, 1}));  // expert 0 keeps tokens 1 and 4
  EXPECT_EQ(p.num_dropped, 2);
  check_consistent(p);
  // Position would have kept tokens 0 and 1 instead.
  const auto q = plan_for(idx, 1, 2, 2, DropPolicy::kPosition);
  EXPECT_EQ(q.slot, (std::vector<int32_t>{0, 1, -1, 0, -1}));
}

TEST(DispatchPlan, ProbsTop2RanksAllRoutesOfAnExpert) {
  // token 0 -> (e0 .6, e1 .3), token 1 -> (e1 .5, e0 .4), token 2 -> (e0 .7, e1 .2); C = 1.
  const std::vector<int32_t> idx = {0, 1, 1, 0, 0, 1};
  const std::vector<double> score = {0.6, 0.3, 0.5, 0.4, 0.7, 0.2};
  const auto p = plan_for(idx, 2, 2, 1, DropPolicy::kProbs, score);
  EXPECT_EQ(p.slot,
            (std::vector<int32_t>{-1, -1, 0, -1, 0, -1}));  // e0 keeps token 2, e1 keeps token 1
  check_consistent(p);
}

TEST(DispatchPlan, RtsKeepsUniformRandomSubset) {
  // 8 tokens all choose expert 0 (of 2), C = 3: each token should be kept with probability 3/8.
  const std::vector<int32_t> idx(8, 0);
  const int trials = 4000;
  std::vector<int> kept(8, 0);
  std::set<std::vector<int32_t>> distinct;
  std::map<std::vector<int32_t>, int> subset_count;
  for (int seed = 0; seed < trials; ++seed) {
    const auto p = plan_for(idx, 1, 2, 3, DropPolicy::kRts, {}, seed);
    ++subset_count[p.slot];
    ASSERT_EQ(p.counts[0], 3);
    int next_slot = 0;
    for (int t = 0; t < 8; ++t) {
      if (p.slot[t] >= 0) {
        ++kept[t];
        EXPECT_EQ(p.slot[t], next_slot++);  // slots in token order, as DeepSpeed's cumsum
      }
    }
    distinct.insert(p.slot);
    if (seed < 20) {
      EXPECT_EQ(plan_for(idx, 1, 2, 3, DropPolicy::kRts, {}, seed).slot,
                p.slot);  // same seed repeats
    }
  }
  const double mean = trials * 3.0 / 8, sd = std::sqrt(trials * (3.0 / 8) * (5.0 / 8));
  for (int t = 0; t < 8; ++t) EXPECT_NEAR(kept[t], mean, 5 * sd) << "token " << t;
  EXPECT_GT(distinct.size(), 50u);  // C(8,3) = 56 subsets; different seeds differ
  // Every subset equally likely: chi-square over the 56 subsets (55 degrees of freedom, mean 55,
  // sd 10.5); 110 is beyond the 99.99th percentile, so a uniform sampler fails once in 10^4 runs
  // and these fixed seeds either always pass or always fail.
  EXPECT_EQ(subset_count.size(), 56u);
  const double expected = trials / 56.0;
  double chi2 = 0;
  for (const auto& [subset, n] : subset_count) chi2 += (n - expected) * (n - expected) / expected;
  chi2 += (56 - static_cast<double>(subset_count.size())) * expected;  // subsets never drawn
  EXPECT_LT(chi2, 110.0);
}

TEST(DispatchPlan, DroplessDropsNothing) {
  std::vector<int32_t> idx;
  for (int t = 0; t < 50; ++t) {
    idx.push_back(t % 7 == 0 ? 3 : 0);  // skewed loads
    idx.push_back(1 + t % 3);
  }
  const auto p =
      plan_for(idx, 2, 5, /*capacity=*/1, DropPolicy::kPosition, {}, 0, /*dropless=*/true);
  EXPECT_EQ(p.num_dropped, 0);
  EXPECT_FALSE(p.padded);
  EXPECT_EQ(p.counts, p.load);
  EXPECT_EQ(p.capacity, 42);  // expert 0 carries 42 of 50 first choices
  EXPECT_EQ(p.num_rows(), 100);
  EXPECT_EQ(p.counts[4], 0);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(p.offsets[i + 1] - p.offsets[i], p.counts[i]);
  check_consistent(p);
}

TEST(MoEConfig, BadArgumentsNameTheField) {
  auto message = [](const MoEConfig& c) {
    try {
      c.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  MoEConfig good;
  good.hidden_size = 8;
  good.ffn_size = 16;
  good.num_experts = 4;
  EXPECT_NO_THROW(good.validate());
  MoEConfig c = good;
  c.top_k = 5;
  EXPECT_NE(message(c).find("top_k"), std::string::npos);
  c = good;
  c.capacity_factor_train = 0;
  EXPECT_NE(message(c).find("moe.capacity_factor"), std::string::npos);
  c = good;
  c.capacity_factor_eval = -1;
  EXPECT_NE(message(c).find("moe.eval_capacity_factor"), std::string::npos);
  c = good;
  c.min_capacity = -1;
  EXPECT_NE(message(c).find("min_capacity"), std::string::npos);
  c = good;
  c.num_experts = 0;
  EXPECT_NE(message(c).find("num_experts"), std::string::npos);
  c = good;
  c.rsample = true;
  c.top_k = 2;
  EXPECT_NE(message(c).find("rsample"), std::string::npos);
  c = good;
  c.selection_bias = true;
  EXPECT_NE(message(c).find("selection_bias"), std::string::npos);
  c = good;
  c.capacity_factor_eval = 0;
  try {
    moe_capacity(10, c, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moe.eval_capacity_factor"), std::string::npos);
  }
  std::vector<int32_t> idx = {0, 7};
  EXPECT_THROW(plan_for(idx, 1, 4, 2, DropPolicy::kPosition), Error);  // expert 7 does not exist
  EXPECT_THROW(plan_for({0, 1}, 1, 2, 2, DropPolicy::kProbs), Error);  // probs without scores
}

}  // namespace
}  // namespace moex::moe
