// GELU (tanh and erf), SiLU, SwiGLU: forward against closed forms, backward against central
// finite differences in double.
#include <gtest/gtest.h>

#include <cmath>

#include "cpu/activation.h"
#include "gradcheck.h"

namespace moex::cpu {
namespace {

using moex::testing::numeric_gradient;
using moex::testing::project;
using moex::testing::random_vector;
using moex::testing::relative_l2;

TEST(Activation, GeluValues) {
  const double xs[3] = {-1.5, 0.0, 2.0};
  double y_tanh[3], y_erf[3];
  gelu_forward<double>(xs, y_tanh, 3, /*exact=*/false);
  gelu_forward<double>(xs, y_erf, 3, /*exact=*/true);
  for (int i = 0; i < 3; ++i) {
    const double x = xs[i];
    EXPECT_NEAR(y_erf[i], 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))), 1e-15);
    EXPECT_NEAR(y_tanh[i],
                0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))), 1e-15);
  }
  // The two forms differ (so the config switch matters) but only slightly.
  EXPECT_GT(std::fabs(y_tanh[0] - y_erf[0]), 1e-6);
  EXPECT_LT(std::fabs(y_tanh[0] - y_erf[0]), 1e-3);
  // gelu(2) exact = 1.9544997361...
  EXPECT_NEAR(y_erf[2], 1.9544997361036416, 1e-12);
}

TEST(Activation, SiluAndSwigluValues) {
  const double x = 0.7, up = -1.3;
  double y;
  silu_forward<double>(&x, &y, 1);
  EXPECT_NEAR(y, 0.7 / (1 + std::exp(-0.7)), 1e-15);
  const double h[2] = {x, up};  // one row, F = 1: gate then up
  double s;
  swiglu_forward<double>(h, &s, 1, 1);
  EXPECT_NEAR(s, y * up, 1e-15);
}

void check_unary_grad(const char* name, void (*fwd)(const double*, double*, int64_t),
                      void (*bwd)(const double*, const double*, double*, int64_t)) {
  const size_t n = 37;
  std::vector<double> x = random_vector<double>(n, 11, -3.0, 3.0);
  const std::vector<double> w = random_vector<double>(n, 12);
  std::vector<double> y(n), dx(n);
  auto loss = [&] {
    fwd(x.data(), y.data(), n);
    return project(y, w);
  };
  bwd(x.data(), w.data(), dx.data(), n);
  const std::vector<double> num = numeric_gradient(x, loss);
  EXPECT_LT(relative_l2(dx, num), 1e-6) << name;
}

TEST(Activation, BackwardMatchesFiniteDifferences) {
  check_unary_grad(
      "gelu_tanh",
      [](const double* x, double* y, int64_t n) { gelu_forward<double>(x, y, n, false); },
      [](const double* x, const double* dy, double* dx, int64_t n) {
        gelu_backward<double>(x, dy, dx, n, false);
      });
  check_unary_grad(
      "gelu_erf",
      [](const double* x, double* y, int64_t n) { gelu_forward<double>(x, y, n, true); },
      [](const double* x, const double* dy, double* dx, int64_t n) {
        gelu_backward<double>(x, dy, dx, n, true);
      });
  check_unary_grad("silu", silu_forward<double>, silu_backward<double>);
}

TEST(Activation, SwigluBackwardMatchesFiniteDifferences) {
  const int64_t rows = 3, ffn = 5;
  std::vector<double> h = random_vector<double>(rows * 2 * ffn, 21, -3.0, 3.0);
  const std::vector<double> w = random_vector<double>(rows * ffn, 22);
  std::vector<double> y(rows * ffn), dh(rows * 2 * ffn);
  swiglu_backward<double>(h.data(), w.data(), dh.data(), rows, ffn);
  const auto num = numeric_gradient(h, [&] {
    swiglu_forward<double>(h.data(), y.data(), rows, ffn);
    return project(y, w);
  });
  EXPECT_LT(relative_l2(dh, num), 1e-6);
}

TEST(Activation, FloatMatchesDouble) {
  const int64_t n = 100000;  // large enough for the parallel path
  const auto xd = random_vector<double>(n, 5, -4.0, 4.0);
  std::vector<float> xf(xd.begin(), xd.end()), yf(n);
  std::vector<double> yd(n);
  gelu_forward<float>(xf.data(), yf.data(), n, false);
  gelu_forward<double>(xd.data(), yd.data(), n, false);
  for (int64_t i = 0; i < n; i += 997) EXPECT_NEAR(yf[i], yd[i], 1e-5);
}

// The float path uses a polynomial exp; check it against the double (libm) path over a range
// that reaches the clamps, relative to the value's size, for every activation and its backward.
TEST(Activation, FloatFastExpMatchesDoubleEverywhere) {
  const int64_t n = 4001;
  std::vector<double> xd(n), gd(n, 1.0), yd(n), dd(n);
  for (int64_t i = 0; i < n; ++i) xd[i] = -100.0 + 200.0 * i / (n - 1);
  std::vector<float> xf(xd.begin(), xd.end()), gf(n, 1.0f), yf(n), df(n);
  auto check = [&](const char* name) {
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(yf[i]) && std::isfinite(df[i])) << name << " at x=" << xd[i];
      EXPECT_NEAR(yf[i], yd[i], 2e-6 * (1 + std::fabs(yd[i]))) << name << " at x=" << xd[i];
      EXPECT_NEAR(df[i], dd[i], 2e-6 * (1 + std::fabs(dd[i]))) << name << "' at x=" << xd[i];
    }
  };
  gelu_forward<float>(xf.data(), yf.data(), n, false);
  gelu_forward<double>(xd.data(), yd.data(), n, false);
  gelu_backward<float>(xf.data(), gf.data(), df.data(), n, false);
  gelu_backward<double>(xd.data(), gd.data(), dd.data(), n, false);
  check("gelu_tanh");
  silu_forward<float>(xf.data(), yf.data(), n);
  silu_forward<double>(xd.data(), yd.data(), n);
  silu_backward<float>(xf.data(), gf.data(), df.data(), n);
  silu_backward<double>(xd.data(), gd.data(), dd.data(), n);
  check("silu");
}

}  // namespace
}  // namespace moex::cpu
