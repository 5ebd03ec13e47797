// Knowledge-distillation loss of a row: naive KL from softmax probabilities (double), gradient
// with respect to the student's logits against central differences, and the added (not
// overwritten) gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/distill_loss.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_l2;

constexpr int64_t kVocab = 9;

// tau^2 * sum_v p_t log(p_t / p_s), probabilities formed directly (no log-sum-exp tricks).
double naive_kd(const double* s, const double* t, int64_t vocab, double tau) {
  double zs = 0, zt = 0;
  for (int64_t c = 0; c < vocab; ++c) {
    zs += std::exp(s[c] / tau);
    zt += std::exp(t[c] / tau);
  }
  double kl = 0;
  for (int64_t c = 0; c < vocab; ++c) {
    const double ps = std::exp(s[c] / tau) / zs, pt = std::exp(t[c] / tau) / zt;
    kl += pt * std::log(pt / ps);
  }
  return tau * tau * kl;
}

TEST(CpuDistillLoss, LossMatchesNaiveKl) {
  const auto s = random_vector<double>(kVocab, 1, -3, 3);
  const auto t = random_vector<double>(kVocab, 2, -3, 3);
  for (const double tau : {0.5, 1.0, 2.0, 4.0}) {
    const double got =
        cpu::distill_loss_row(s.data(), t.data(), kVocab, tau, 1.0, static_cast<double*>(nullptr));
    EXPECT_NEAR(got, naive_kd(s.data(), t.data(), kVocab, tau), 1e-13) << "tau " << tau;
    EXPECT_GT(got, 0.0);
    const auto sf = testing::cast_vector<float>(s), tf = testing::cast_vector<float>(t);
    const float got_f = cpu::distill_loss_row(sf.data(), tf.data(), kVocab, static_cast<float>(tau),
                                              1.0f, static_cast<float*>(nullptr));
    EXPECT_NEAR(got_f, got, 1e-5 * got + 1e-7) << "tau " << tau;
  }
}

TEST(CpuDistillLoss, EqualLogitsGiveZeroLossAndGradient) {
  const auto s = random_vector<double>(kVocab, 3, -3, 3);
  auto shifted = s;  // a constant shift leaves the softmax as it is
  for (double& v : shifted) v += 7.5;
  std::vector<double> grad(kVocab, 0.0);
  EXPECT_NEAR(cpu::distill_loss_row(s.data(), shifted.data(), kVocab, 2.0, 1.0, grad.data()), 0.0,
              1e-13);
  for (double g : grad) EXPECT_NEAR(g, 0.0, 1e-15);
}

TEST(CpuDistillLoss, GradientMatchesFiniteDifferencesAndIsAdded) {
  for (const double tau : {0.7, 1.0, 3.0}) {
    auto s = random_vector<double>(kVocab, 4, -3, 3);
    const auto t = random_vector<double>(kVocab, 5, -3, 3);
    const double scale = 0.37;  // upstream gradient
    auto loss = [&] {
      return scale * cpu::distill_loss_row(s.data(), t.data(), kVocab, tau, 1.0,
                                           static_cast<double*>(nullptr));
    };
    const auto numeric = numeric_gradient(s, loss);
    // The row already holds another term's gradient (the cross-entropy's): KD adds to it.
    const auto before = random_vector<double>(kVocab, 6);
    std::vector<double> grad = before;
    cpu::distill_loss_row(s.data(), t.data(), kVocab, tau, scale, grad.data());
    for (int64_t c = 0; c < kVocab; ++c) grad[c] -= before[c];
    EXPECT_LT(relative_l2(grad, numeric), 1e-7) << "tau " << tau;
  }
}

TEST(CpuDistillLoss, LargeLogitsStayFinite) {
  std::vector<double> s(kVocab), t(kVocab);
  for (int64_t c = 0; c < kVocab; ++c) s[c] = 800.0 + c, t[c] = 900.0 - c;
  std::vector<double> grad(kVocab, 0.0);
  const double got = cpu::distill_loss_row(s.data(), t.data(), kVocab, 1.0, 1.0, grad.data());
  // Shifting both rows by a constant does not change the softmaxes: compare with small logits.
  std::vector<double> s0(kVocab), t0(kVocab);
  for (int64_t c = 0; c < kVocab; ++c) s0[c] = s[c] - 800.0, t0[c] = t[c] - 900.0;
  EXPECT_NEAR(got, naive_kd(s0.data(), t0.data(), kVocab, 1.0), 1e-10);
  for (double g : grad) EXPECT_TRUE(std::isfinite(g));
}

// A row split into column slices (tensor parallelism): each slice's (max, sum), merged into the
// row's log-sum-exps, then each slice's terms with them: the terms add up to the naive KL and the
// slices' gradients are the whole row's.
TEST(CpuDistillLoss, ColumnSlicesAddUpToTheWholeRow) {
  constexpr int64_t kWide = 23;
  const auto s = random_vector<float>(kWide, 5, -4, 4);
  const auto t = random_vector<float>(kWide, 6, -4, 4);
  const double tau = 1.5;
  std::vector<float> whole_grad(kWide, 0.0f), slice_grad(kWide, 0.0f);
  cpu::distill_loss_row<float>(s.data(), t.data(), kWide, 1.5f, 0.3f, whole_grad.data());
  const std::vector<double> sd(s.begin(), s.end()), td(t.begin(), t.end());
  const int64_t starts[] = {0, 10, 11, kWide};  // one slice of a single column
  double lse[2];
  for (int side = 0; side < 2; ++side) {
    const float* x = side == 0 ? s.data() : t.data();
    double mx = -INFINITY, sum = 0;
    cpu::MaxSum parts[3];
    for (int p = 0; p < 3; ++p) {
      parts[p] = cpu::max_sum_scaled(x + starts[p], starts[p + 1] - starts[p], 1.0 / tau);
      mx = std::max(mx, parts[p].max);
    }
    for (const cpu::MaxSum& p : parts) sum += p.sum * std::exp(p.max - mx);
    lse[side] = mx + std::log(sum);
  }
  double kd = 0;
  for (int p = 0; p < 3; ++p)
    kd +=
        cpu::distill_columns(s.data() + starts[p], t.data() + starts[p], starts[p + 1] - starts[p],
                             tau, lse[0], lse[1], 0.3, slice_grad.data() + starts[p]);
  EXPECT_NEAR(kd, naive_kd(sd.data(), td.data(), kWide, tau), 1e-9);
  EXPECT_LT(relative_l2(std::vector<double>(slice_grad.begin(), slice_grad.end()),
                        std::vector<double>(whole_grad.begin(), whole_grad.end())),
            1e-6);
}

TEST(CpuDistillLoss, BadArgumentsNameTheArgument) {
  std::vector<float> s(kVocab), t(kVocab);
  testing::expect_error_naming(
      [&] { cpu::distill_loss_row(s.data(), t.data(), kVocab, 0.0f, 1.0f, s.data()); },
      {"temperature"});
  testing::expect_error_naming(
      [&] { cpu::distill_loss_row(s.data(), t.data(), 0, 1.0f, 1.0f, s.data()); }, {"vocab"});
}

}  // namespace
}  // namespace moex
