// LayerNorm and RMSNorm: forward against naive double loops, backward against central differences.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "cpu/norm.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::numeric_gradient;
using testing::project;
using testing::random_vector;
using testing::relative_l2;

constexpr int64_t kRows = 5, kDim = 7;
constexpr double kEps = 1e-5;

std::vector<double> naive_layernorm(const std::vector<double>& x, const std::vector<double>& w,
                                    const std::vector<double>* b, int64_t rows, int64_t dim) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < dim; ++c) mean += x[r * dim + c] / dim;
    for (int64_t c = 0; c < dim; ++c) var += std::pow(x[r * dim + c] - mean, 2) / dim;
    for (int64_t c = 0; c < dim; ++c)
      y[r * dim + c] = (x[r * dim + c] - mean) / std::sqrt(var + kEps) * w[c] + (b ? (*b)[c] : 0.0);
  }
  return y;
}

std::vector<double> naive_rmsnorm(const std::vector<double>& x, const std::vector<double>& w,
                                  int64_t rows, int64_t dim) {
  std::vector<double> y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t c = 0; c < dim; ++c) ms += x[r * dim + c] * x[r * dim + c] / dim;
    for (int64_t c = 0; c < dim; ++c) y[r * dim + c] = x[r * dim + c] / std::sqrt(ms + kEps) * w[c];
  }
  return y;
}

TEST(CpuNorm, LayerNormForwardMatchesNaive) {
  const auto x = random_vector<double>(kRows * kDim, 1, -2, 3);
  const auto w = random_vector<double>(kDim, 2, 0.5, 1.5);
  const auto b = random_vector<double>(kDim, 3);
  for (bool with_bias : {true, false}) {
    const auto expect = naive_layernorm(x, w, with_bias ? &b : nullptr, kRows, kDim);
    std::vector<double> y(x.size()), mean(kRows), rstd(kRows);
    cpu::layernorm_forward(x.data(), w.data(), with_bias ? b.data() : nullptr, kRows, kDim, kEps,
                           y.data(), mean.data(), rstd.data());
    EXPECT_LT(relative_l2(y, expect), 1e-12);
    const auto xf = testing::cast_vector<float>(x), wf = testing::cast_vector<float>(w),
               bf = testing::cast_vector<float>(b);
    std::vector<float> yf(x.size()), meanf(kRows), rstdf(kRows);
    cpu::layernorm_forward(xf.data(), wf.data(), with_bias ? bf.data() : nullptr, kRows, kDim,
                           static_cast<float>(kEps), yf.data(), meanf.data(), rstdf.data());
    EXPECT_LT(relative_l2(testing::cast_vector<double>(yf), expect), 1e-6);
  }
}

TEST(CpuNorm, LayerNormBackwardMatchesFiniteDifferences) {
  auto x = random_vector<double>(kRows * kDim, 4, -2, 3);
  auto w = random_vector<double>(kDim, 5, 0.5, 1.5);
  auto b = random_vector<double>(kDim, 6);
  const auto proj = random_vector<double>(kRows * kDim, 7);
  std::vector<double> y(x.size()), mean(kRows), rstd(kRows);
  auto loss = [&] {
    cpu::layernorm_forward(x.data(), w.data(), b.data(), kRows, kDim, kEps, y.data(), mean.data(),
                           rstd.data());
    return project(y, proj);
  };
  const auto num_dx = numeric_gradient(x, loss);
  const auto num_dw = numeric_gradient(w, loss);
  const auto num_db = numeric_gradient(b, loss);
  loss();
  std::vector<double> dx(x.size(), 99.0), dw(kDim, 0.0), db(kDim, 0.0);
  cpu::layernorm_backward(proj.data(), x.data(), w.data(), mean.data(), rstd.data(), kRows, kDim,
                          dx.data(), dw.data(), db.data());
  EXPECT_LT(relative_l2(dx, num_dx), 1e-6);
  EXPECT_LT(relative_l2(dw, num_dw), 1e-6);
  EXPECT_LT(relative_l2(db, num_db), 1e-6);

  // Parameter gradients accumulate; dx is overwritten (and may alias dy).
  std::vector<double> dy = proj, dw2 = dw;
  cpu::layernorm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), kRows, kDim,
                          dy.data(), dw2.data(), static_cast<double*>(nullptr));
  EXPECT_LT(relative_l2(dy, num_dx), 1e-6);
  for (int64_t c = 0; c < kDim; ++c) EXPECT_NEAR(dw2[c], 2 * dw[c], 1e-12);
}

TEST(CpuNorm, RMSNormForwardMatchesNaive) {
  const auto x = random_vector<double>(kRows * kDim, 8, -2, 3);
  const auto w = random_vector<double>(kDim, 9, 0.5, 1.5);
  const auto expect = naive_rmsnorm(x, w, kRows, kDim);
  std::vector<double> y(x.size()), rstd(kRows);
  cpu::rmsnorm_forward(x.data(), w.data(), kRows, kDim, kEps, y.data(), rstd.data());
  EXPECT_LT(relative_l2(y, expect), 1e-12);
  const auto xf = testing::cast_vector<float>(x), wf = testing::cast_vector<float>(w);
  std::vector<float> yf(x.size()), rstdf(kRows);
  cpu::rmsnorm_forward(xf.data(), wf.data(), kRows, kDim, static_cast<float>(kEps), yf.data(),
                       rstdf.data());
  EXPECT_LT(relative_l2(testing::cast_vector<double>(yf), expect), 1e-6);
}

TEST(CpuNorm, RMSNormBackwardMatchesFiniteDifferences) {
  auto x = random_vector<double>(kRows * kDim, 10, -2, 3);
  auto w = random_vector<double>(kDim, 11, 0.5, 1.5);
  const auto proj = random_vector<double>(kRows * kDim, 12);
  std::vector<double> y(x.size()), rstd(kRows);
  auto loss = [&] {
    cpu::rmsnorm_forward(x.data(), w.data(), kRows, kDim, kEps, y.data(), rstd.data());
    return project(y, proj);
  };
  const auto num_dx = numeric_gradient(x, loss);
  const auto num_dw = numeric_gradient(w, loss);
  loss();
  std::vector<double> dx(x.size(), 99.0), dw(kDim, 0.0);
  cpu::rmsnorm_backward(proj.data(), x.data(), w.data(), rstd.data(), kRows, kDim, dx.data(),
                        dw.data());
  EXPECT_LT(relative_l2(dx, num_dx), 1e-6);
  EXPECT_LT(relative_l2(dw, num_dw), 1e-6);
}

TEST(CpuNorm, BadArgumentsNameTheArgument) {
  std::vector<float> x(6), w(3), y(6), s(2);
  testing::expect_error_naming(
      [&] { cpu::rmsnorm_forward(x.data(), w.data(), 2, 0, 1e-5f, y.data(), s.data()); }, {"dim"});
  testing::expect_error_naming(
      [&] { cpu::rmsnorm_forward(x.data(), w.data(), 2, 3, -1.0f, y.data(), s.data()); }, {"eps"});
  testing::expect_error_naming(
      [&] {
        cpu::layernorm_forward(x.data(), static_cast<const float*>(nullptr),
                               static_cast<const float*>(nullptr), 2, 3, 1e-5f, y.data(), s.data(),
                               s.data());
      },
      {"weight"});
  testing::expect_error_naming(
      [&] {
        cpu::layernorm_backward(y.data(), x.data(), w.data(), s.data(), s.data(), 2, 3, y.data(),
                                static_cast<float*>(nullptr), static_cast<float*>(nullptr));
      },
      {"dweight"});
  testing::expect_error_naming(
      [&] { cpu::rmsnorm_forward(x.data(), w.data(), -1, 3, 1e-5f, y.data(), s.data()); },
      {"num_rows"});
}

// Big enough to fork threads (the small cases above run on one): forward against the naive loop,
// and backward identical bit for bit with one thread and with two.
TEST(CpuNorm, ThreadedSizesMatchNaiveAndDoNotDependOnThreadCount) {
  const int64_t rows = 70, dim = 301;
  const auto x = random_vector<double>(rows * dim, 13, -2, 3);
  const auto w = random_vector<double>(dim, 14, 0.5, 1.5);
  const auto b = random_vector<double>(dim, 15);
  const auto dy = random_vector<double>(rows * dim, 16);
  std::vector<double> y(x.size()), mean(rows), rstd(rows);
  cpu::layernorm_forward(x.data(), w.data(), b.data(), rows, dim, kEps, y.data(), mean.data(),
                         rstd.data());
  EXPECT_LT(relative_l2(y, naive_layernorm(x, w, &b, rows, dim)), 1e-12);
  std::vector<double> r_rstd(rows);
  cpu::rmsnorm_forward(x.data(), w.data(), rows, dim, kEps, y.data(), r_rstd.data());
  EXPECT_LT(relative_l2(y, naive_rmsnorm(x, w, rows, dim)), 1e-12);
  std::vector<double> dx[2], dw[2], db[2], rdx[2], rdw[2];
  const int saved = omp_get_max_threads();
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    dx[t].assign(x.size(), 0.0);
    dw[t].assign(dim, 0.0);
    db[t].assign(dim, 0.0);
    rdx[t].assign(x.size(), 0.0);
    rdw[t].assign(dim, 0.0);
    cpu::layernorm_backward(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), rows, dim,
                            dx[t].data(), dw[t].data(), db[t].data());
    cpu::rmsnorm_backward(dy.data(), x.data(), w.data(), r_rstd.data(), rows, dim, rdx[t].data(),
                          rdw[t].data());
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(dx[0], dx[1]);
  EXPECT_EQ(dw[0], dw[1]);
  EXPECT_EQ(db[0], db[1]);
  EXPECT_EQ(rdx[0], rdx[1]);
  EXPECT_EQ(rdw[0], rdw[1]);
}

}  // namespace
}  // namespace moex
