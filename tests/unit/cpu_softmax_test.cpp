// Row softmax and log-softmax: naive forward, finite-difference backward, large-logit stability.
#include <gtest/gtest.h>

#include <cmath>

#include "cpu/softmax.h"
#include "cpu/vec_math.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::numeric_gradient;
using testing::project;
using testing::random_vector;
using testing::relative_l2;

constexpr int64_t kSoftmaxRows = 5, kSoftmaxCols = 7;

std::vector<double> naive_softmax(const std::vector<double>& x, int64_t rows, int64_t cols) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += std::exp(x[r * cols + c]);
    for (int64_t c = 0; c < cols; ++c) y[r * cols + c] = std::exp(x[r * cols + c]) / sum;
  }
  return y;
}

TEST(CpuSoftmax, ForwardMatchesNaive) {
  const auto x = random_vector<double>(kSoftmaxRows * kSoftmaxCols, 1, -3, 3);
  const auto expect = naive_softmax(x, kSoftmaxRows, kSoftmaxCols);
  std::vector<double> y(x.size()), ly(x.size());
  cpu::softmax_forward(x.data(), kSoftmaxRows, kSoftmaxCols, y.data());
  EXPECT_LT(relative_l2(y, expect), 1e-14);
  cpu::log_softmax_forward(x.data(), kSoftmaxRows, kSoftmaxCols, ly.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(ly[i], std::log(expect[i]), 1e-12);

  const auto xf = testing::cast_vector<float>(x);
  std::vector<float> yf(x.size());
  cpu::softmax_forward(xf.data(), kSoftmaxRows, kSoftmaxCols, yf.data());
  EXPECT_LT(relative_l2(testing::cast_vector<double>(yf), expect), 1e-6);
}

TEST(CpuSoftmax, LargeLogitsStayFinite) {
  // exp(1000) overflows: a kernel without max subtraction returns NaN here.
  auto x = random_vector<double>(kSoftmaxRows * kSoftmaxCols, 2, -3, 3);
  const auto expect = naive_softmax(x, kSoftmaxRows, kSoftmaxCols);
  for (double& v : x) v += 1000.0;
  std::vector<float> xf = testing::cast_vector<float>(x), yf(x.size()), lyf(x.size());
  cpu::softmax_forward(xf.data(), kSoftmaxRows, kSoftmaxCols, yf.data());
  cpu::log_softmax_forward(xf.data(), kSoftmaxRows, kSoftmaxCols, lyf.data());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_TRUE(std::isfinite(yf[i]) && std::isfinite(lyf[i]));
    EXPECT_NEAR(yf[i], expect[i], 1e-4);
    EXPECT_NEAR(lyf[i], std::log(expect[i]), 1e-3);
  }
}

TEST(CpuSoftmax, BackwardMatchesFiniteDifferences) {
  auto x = random_vector<double>(kSoftmaxRows * kSoftmaxCols, 3, -3, 3);
  const auto proj = random_vector<double>(kSoftmaxRows * kSoftmaxCols, 4);
  std::vector<double> y(x.size());
  for (bool log : {false, true}) {
    auto loss = [&] {
      if (log) {
        cpu::log_softmax_forward(x.data(), kSoftmaxRows, kSoftmaxCols, y.data());
      } else {
        cpu::softmax_forward(x.data(), kSoftmaxRows, kSoftmaxCols, y.data());
      }
      return project(y, proj);
    };
    const auto numeric = numeric_gradient(x, loss);
    loss();
    std::vector<double> dx(x.size(), 99.0);
    if (log) {
      cpu::log_softmax_backward(y.data(), proj.data(), kSoftmaxRows, kSoftmaxCols, dx.data());
    } else {
      cpu::softmax_backward(y.data(), proj.data(), kSoftmaxRows, kSoftmaxCols, dx.data());
    }
    EXPECT_LT(relative_l2(dx, numeric), 1e-6) << (log ? "log_softmax" : "softmax");
    // In place: dx aliases dy.
    std::vector<double> inplace = proj;
    if (log) {
      cpu::log_softmax_backward(y.data(), inplace.data(), kSoftmaxRows, kSoftmaxCols,
                                inplace.data());
    } else {
      cpu::softmax_backward(y.data(), inplace.data(), kSoftmaxRows, kSoftmaxCols, inplace.data());
    }
    EXPECT_LT(relative_l2(inplace, dx), 1e-15);
  }
}

TEST(CpuSoftmax, BadArgumentsNameTheArgument) {
  std::vector<float> x(6), y(6);
  testing::expect_error_naming([&] { cpu::softmax_forward(x.data(), 2, 0, y.data()); },
                               {"num_cols"});
  testing::expect_error_naming([&] { cpu::log_softmax_forward(x.data(), -2, 3, y.data()); },
                               {"num_rows"});
}

// The fp32 row exp against libm in double: relative error, the flush below -87.3, -inf and NaN,
// a length that is not a multiple of the vector width, and the returned sum.
TEST(CpuSoftmax, VectorExpMatchesLibm) {
  const int64_t n = 4003;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(-90.0 * i / (n - 1));  // 0 .. -90
  x[5] = -INFINITY;
  std::vector<float> y(n, -1.0f);
  const float shift = 0.25f;
  const float sum = cpu::exp_shifted_sum(x.data(), -shift, n, y.data());  // exp(x + 0.25)
  double max_rel = 0, expect_sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double t = static_cast<double>(x[i]) + shift;
    const double e = std::exp(t);
    expect_sum += e;
    if (t > -87.3) {
      max_rel = std::max(max_rel, std::fabs(y[i] - e) / e);
    } else {
      EXPECT_EQ(y[i], 0.0f) << "x=" << x[i];
    }
  }
  EXPECT_LT(max_rel, 3e-7);
  EXPECT_NEAR(sum, expect_sum, 1e-6 * expect_sum);
  EXPECT_EQ(y[5], 0.0f);
  const std::vector<float> special = {NAN, 0.0f, -1.0f};
  std::vector<float> out(3);
  EXPECT_TRUE(std::isnan(cpu::exp_shifted_sum(special.data(), 0.0f, 3, out.data())));
  EXPECT_TRUE(std::isnan(out[0]));
  EXPECT_EQ(out[1], 1.0f);
  // Sum alone (null output) and in place give the same numbers.
  std::vector<float> inplace = x;
  EXPECT_EQ(cpu::exp_shifted_sum(x.data(), -shift, n, static_cast<float*>(nullptr)), sum);
  cpu::exp_shifted_sum(inplace.data(), -shift, n, inplace.data());
  EXPECT_EQ(inplace, y);
}

}  // namespace
}  // namespace moex
