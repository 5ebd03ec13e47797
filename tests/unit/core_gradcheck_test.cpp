// The shared test helpers of tests/gradcheck.h: relative_l2 and central differences. The kernel
// and model tests pass or fail by these, so they are checked against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "gradcheck.h"

namespace moex::testing {
namespace {

TEST(GradCheck, RelativeL2AgainstHandComputedValues) {
  // ||(1, 2, 2) - (1, 2, 0)|| / ||(1, 2, 0)|| = 2 / sqrt(5)
  EXPECT_DOUBLE_EQ(relative_l2(std::vector<double>{1, 2, 2}, std::vector<double>{1, 2, 0}),
                   2.0 / std::sqrt(5.0));
  EXPECT_EQ(relative_l2(std::vector<double>{3, -4}, std::vector<double>{3, -4}), 0.0);
  // A zero reference divides by 1e-300, not by zero: any difference is enormous, none is 0.
  EXPECT_GT(relative_l2(std::vector<double>{1e-100}, std::vector<double>{0}), 1e100);
  EXPECT_EQ(relative_l2(std::vector<double>{0}, std::vector<double>{0}), 0.0);
}

TEST(GradCheck, RelativeL2OfDifferentSizesFailsEveryTolerance) {
  // A gradient with a missing or extra element equal on the common prefix must not pass.
  const std::vector<double> want{0.5, -1.5, 2.0};
  const std::vector<double> shorter{0.5, -1.5};
  const std::vector<double> longer{0.5, -1.5, 2.0, 7.0};
  const std::vector<double> empty;
  EXPECT_FALSE(relative_l2(shorter, want) < 1e300);
  EXPECT_FALSE(relative_l2(want, shorter) < 1e300);
  EXPECT_FALSE(relative_l2(longer, want) < 1e300);
  EXPECT_FALSE(relative_l2(empty, want) < 1e300);
  EXPECT_EQ(relative_l2(empty, empty), 0.0);
}

TEST(GradCheck, NumericGradientOfACubic) {
  // loss = sum x^3 + x0 * x1: d/dx0 = 3 x0^2 + x1, d/dx1 = 3 x1^2 + x0, d/dx2 = 3 x2^2.
  std::vector<double> x{0.3, -1.2, 2.0};
  const std::vector<double> saved = x;
  auto loss = [&] {
    return x[0] * x[0] * x[0] + x[1] * x[1] * x[1] + x[2] * x[2] * x[2] + x[0] * x[1];
  };
  const std::vector<double> grad = numeric_gradient(x, loss);
  const std::vector<double> want{3 * 0.09 - 1.2, 3 * 1.44 + 0.3, 3 * 4.0};
  EXPECT_LT(relative_l2(grad, want), 1e-8);
  EXPECT_EQ(x, saved);  // every element restored
}

}  // namespace
}  // namespace moex::testing
