// The learning-rate schedule learning_rate(opt, schedule, step, total) of train/train_config.h
// (docs/config.md: linear warmup over schedule.warmup_steps, then by default cosine decay to
// lr * min_lr_ratio at the last step; the other decay styles at the end), against the formulas
// written out here. Steps are 0-based
// as the trainer passes them: it trains steps 0 .. total - 1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace moex::train {
namespace {

constexpr double kPi = 3.14159265358979323846;

struct Case {
  double lr, min_lr_ratio;
  int64_t warmup, total;
};

const Case kCases[] = {
    {1e-3, 0.1, 10, 100}, {3e-4, 0.0, 4, 37}, {2e-2, 0.5, 1, 12},
    {1e-3, 1.0, 5, 50},   {6e-4, 0.1, 0, 40}, {5e-3, 0.2, 2, 3},
};

double lr_at(const Case& c, int64_t step) {
  OptimizerConfig opt;
  opt.lr = c.lr;
  ScheduleConfig schedule;
  schedule.warmup_steps = c.warmup;
  schedule.min_lr_ratio = c.min_lr_ratio;
  return learning_rate(opt, schedule, step, c.total);
}

std::string name(const Case& c) {
  return "lr " + std::to_string(c.lr) + " min_ratio " + std::to_string(c.min_lr_ratio) +
         " warmup " + std::to_string(c.warmup) + " total " + std::to_string(c.total);
}

TEST(TrainSchedule, WarmupIsLinearFromLrOverWarmupToLr) {
  // Step s of the warmup trains with lr * (s + 1) / warmup: the first step lr / warmup (never 0,
  // which would waste a step), the last warmup step the full lr.
  for (const Case& c : kCases) {
    for (int64_t s = 0; s < c.warmup; ++s)
      EXPECT_NEAR(lr_at(c, s), c.lr * static_cast<double>(s + 1) / static_cast<double>(c.warmup),
                  1e-15 * c.lr)
          << name(c) << " step " << s;
    if (c.warmup > 0) {
      EXPECT_DOUBLE_EQ(lr_at(c, c.warmup - 1), c.lr) << name(c);
    }
  }
}

TEST(TrainSchedule, DecayIsACosineFromLrToTheMinimum) {
  // After the warmup: lr(s) = min + (lr - min) * (1 + cos(pi * x(s))) / 2 with x(s) rising by
  // the same amount every step from about 0 to 1. Solving for x from the returned values checks
  // that shape whatever step the cosine is anchored on (the end point has its own test).
  for (const Case& c : kCases) {
    const double min_lr = c.lr * c.min_lr_ratio;
    if (c.min_lr_ratio == 1.0) {  // nothing to decay: lr all the way
      for (int64_t s = c.warmup; s < c.total; ++s)
        EXPECT_DOUBLE_EQ(lr_at(c, s), c.lr) << name(c) << " step " << s;
      continue;
    }
    const int64_t decay_steps = c.total - c.warmup;
    std::vector<double> x;
    for (int64_t s = c.warmup; s < c.total; ++s) {
      const double lr = lr_at(c, s);
      EXPECT_LE(lr, c.lr * (1 + 1e-12)) << name(c) << " step " << s;
      EXPECT_GE(lr, min_lr * (1 - 1e-12)) << name(c) << " step " << s;
      const double cos_x = std::max(-1.0, std::min(1.0, 2 * (lr - min_lr) / (c.lr - min_lr) - 1));
      x.push_back(std::acos(cos_x) / kPi);
    }
    // x starts within one step of 0 and ends within one step of 1...
    EXPECT_LE(x.front(), 1.0 / static_cast<double>(decay_steps) + 1e-7) << name(c);
    EXPECT_GE(x.back(), 1.0 - 1.0 / static_cast<double>(decay_steps) - 1e-7) << name(c);
    // ...and rises by the same step, 1/decay_steps or 1/(decay_steps - 1), each time. acos is
    // ill-conditioned near 0 and 1, hence the looser tolerance.
    for (size_t i = 1; i < x.size(); ++i) {
      const double dx = x[i] - x[i - 1];
      const double a = 1.0 / static_cast<double>(decay_steps);
      const double b = decay_steps > 1 ? 1.0 / static_cast<double>(decay_steps - 1) : a;
      EXPECT_TRUE(std::fabs(dx - a) < 1e-5 || std::fabs(dx - b) < 1e-5)
          << name(c) << " step " << c.warmup + static_cast<int64_t>(i) << ": x rose by " << dx;
      EXPECT_NEAR(dx, x[1] - x[0], 1e-5) << name(c) << " the same rise every step";
    }
  }
}

TEST(TrainSchedule, NeverRisesAfterWarmupAndStaysAtTheMinimumPastTheEnd) {
  for (const Case& c : kCases) {
    const double min_lr = c.lr * c.min_lr_ratio;
    for (int64_t s = std::max<int64_t>(c.warmup, 1); s < c.total + 5; ++s)
      EXPECT_LE(lr_at(c, s), lr_at(c, s - 1) * (1 + 1e-15)) << name(c) << " step " << s;
    // A run resumed with more steps than its schedule (or an eval past the end) keeps min lr.
    for (int64_t s = c.total; s < c.total + 5; ++s)
      EXPECT_NEAR(lr_at(c, s), min_lr, 1e-15 * c.lr) << name(c) << " step " << s;
  }
}

TEST(TrainSchedule, WarmupOfZeroStartsAtTheFullLr) {
  const Case c{6e-4, 0.1, 0, 40};
  ASSERT_TRUE(std::isfinite(lr_at(c, 0)));
  EXPECT_LE(lr_at(c, 0), c.lr);
  EXPECT_LE(c.lr - lr_at(c, 0), c.lr - lr_at(c, 1));  // within the first step's decay
}

TEST(TrainSchedule, TheLastStepTrainsAtTheMinimum) {
  // docs/config.md: cosine decay to lr * min_lr_ratio at the last step, which is total - 1.
  for (const Case& c : kCases) {
    if (c.total - 1 < c.warmup) continue;
    EXPECT_NEAR(lr_at(c, c.total - 1), c.lr * c.min_lr_ratio, 1e-12 * c.lr) << name(c);
  }
}

// The other decay styles (schedule.decay), each against its formula written out here, after the
// same warmup.
TEST(TrainSchedule, LinearConstantInverseSqrtAndWsdDecays) {
  OptimizerConfig opt;
  opt.lr = 1e-3;
  ScheduleConfig schedule;
  schedule.warmup_steps = 4;
  schedule.min_lr_ratio = 0.1;
  const int64_t total = 24, decay_steps = total - 4;
  const double min_lr = 1e-4;
  auto lr_of = [&](LrDecay decay, int64_t step) {
    schedule.decay = decay;
    return learning_rate(opt, schedule, step, total);
  };
  for (LrDecay decay : {LrDecay::kLinear, LrDecay::kConstant, LrDecay::kInverseSqrt, LrDecay::kWsd})
    for (int64_t s = 0; s < 4; ++s)
      EXPECT_DOUBLE_EQ(lr_of(decay, s), 1e-3 * static_cast<double>(s + 1) / 4) << "warmup " << s;
  schedule.decay_fraction = 0.25;  // wsd: the last 5 of the 20 decaying steps
  for (int64_t s = 4; s < total + 3; ++s) {
    const double x = std::min(1.0, static_cast<double>(s + 1 - 4) / decay_steps);
    EXPECT_NEAR(lr_of(LrDecay::kLinear, s), 1e-3 - (1e-3 - min_lr) * x, 1e-15) << s;
    EXPECT_EQ(lr_of(LrDecay::kConstant, s), 1e-3) << s;
    EXPECT_NEAR(lr_of(LrDecay::kInverseSqrt, s),
                std::max(min_lr, 1e-3 * std::sqrt(4.0 / static_cast<double>(s + 1))), 1e-15)
        << s;
    const double w = x <= 0.75 ? 0.0 : (x - 0.75) / 0.25;
    EXPECT_NEAR(lr_of(LrDecay::kWsd, s), 1e-3 - (1e-3 - min_lr) * w, 1e-15) << s;
  }
  EXPECT_EQ(lr_of(LrDecay::kWsd, 18), 1e-3);  // x = 0.75: the last stable step
  EXPECT_LT(lr_of(LrDecay::kWsd, 19), 1e-3);
  EXPECT_NEAR(lr_of(LrDecay::kWsd, total - 1), min_lr, 1e-15);
  EXPECT_NEAR(lr_of(LrDecay::kLinear, total - 1), min_lr, 1e-15);
  // Without a warmup, inverse_sqrt starts at the full lr.
  schedule.warmup_steps = 0;
  EXPECT_EQ(lr_of(LrDecay::kInverseSqrt, 0), 1e-3);
  EXPECT_NEAR(lr_of(LrDecay::kInverseSqrt, 3), 5e-4, 1e-15);
}

}  // namespace
}  // namespace moex::train
