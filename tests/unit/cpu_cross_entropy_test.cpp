// Cross-entropy from logits: naive loss with ignore_index, gradient against central differences.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "cpu/cross_entropy.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::numeric_gradient;
using testing::random_vector;
using testing::relative_l2;

constexpr int64_t kCeRows = 6, kCeVocab = 7;
const std::vector<int32_t> kTargets = {3, -100, 0, 6, -100, 2};  // two ignored rows

double naive_loss(const std::vector<double>& logits, const std::vector<int32_t>& targets) {
  double total = 0;
  int count = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(targets.size()); ++i) {
    if (targets[i] == -100) continue;
    double sum = 0;
    for (int64_t c = 0; c < kCeVocab; ++c) sum += std::exp(logits[i * kCeVocab + c]);
    total += -std::log(std::exp(logits[i * kCeVocab + targets[i]]) / sum);
    ++count;
  }
  return total / count;
}

TEST(CpuCrossEntropy, LossMatchesNaiveAndSkipsIgnoredRows) {
  const auto logits = random_vector<double>(kCeRows * kCeVocab, 1, -3, 3);
  const double loss =
      cpu::cross_entropy_forward_backward(logits.data(), kTargets.data(), kCeRows, kCeVocab,
                                          cpu::kIgnoreIndex, 1.0, static_cast<double*>(nullptr));
  EXPECT_NEAR(loss, naive_loss(logits, kTargets), 1e-13);
  // Changing an ignored row's logits changes nothing.
  auto changed = logits;
  for (int64_t c = 0; c < kCeVocab; ++c) changed[1 * kCeVocab + c] += 5.0 * c;
  EXPECT_EQ(
      cpu::cross_entropy_forward_backward(changed.data(), kTargets.data(), kCeRows, kCeVocab,
                                          cpu::kIgnoreIndex, 1.0, static_cast<double*>(nullptr)),
      loss);
  const auto lf = testing::cast_vector<float>(logits);
  const float loss_f =
      cpu::cross_entropy_forward_backward(lf.data(), kTargets.data(), kCeRows, kCeVocab,
                                          cpu::kIgnoreIndex, 1.0f, static_cast<float*>(nullptr));
  EXPECT_NEAR(loss_f, loss, 1e-5 * std::fabs(loss));
}

TEST(CpuCrossEntropy, GradientMatchesFiniteDifferences) {
  auto logits = random_vector<double>(kCeRows * kCeVocab, 2, -3, 3);
  const double dloss = 0.37;  // upstream gradient
  auto loss = [&] {
    return dloss * cpu::cross_entropy_forward_backward(logits.data(), kTargets.data(), kCeRows,
                                                       kCeVocab, cpu::kIgnoreIndex, 1.0,
                                                       static_cast<double*>(nullptr));
  };
  const auto numeric = numeric_gradient(logits, loss);
  std::vector<double> dlogits(logits.size(), 99.0);
  cpu::cross_entropy_forward_backward(logits.data(), kTargets.data(), kCeRows, kCeVocab,
                                      cpu::kIgnoreIndex, dloss, dlogits.data());
  EXPECT_LT(relative_l2(dlogits, numeric), 1e-6);
  for (int64_t c = 0; c < kCeVocab; ++c) EXPECT_EQ(dlogits[4 * kCeVocab + c], 0.0);
  // In place: dlogits over the logits buffer.
  std::vector<double> inplace = logits;
  const double l2 = cpu::cross_entropy_forward_backward(
      inplace.data(), kTargets.data(), kCeRows, kCeVocab, cpu::kIgnoreIndex, dloss, inplace.data());
  EXPECT_NEAR(l2 * dloss, loss(), 1e-14);
  EXPECT_LT(relative_l2(inplace, dlogits), 1e-14);
}

TEST(CpuCrossEntropy, AllIgnoredGivesZeroLossAndGradient) {
  const auto logits = random_vector<double>(2 * kCeVocab, 3);
  const std::vector<int32_t> targets = {-100, -100};
  std::vector<double> dlogits(logits.size(), 99.0);
  EXPECT_EQ(cpu::cross_entropy_forward_backward(logits.data(), targets.data(), 2, kCeVocab,
                                                cpu::kIgnoreIndex, 1.0, dlogits.data()),
            0.0);
  for (double g : dlogits) EXPECT_EQ(g, 0.0);
}

TEST(CpuCrossEntropy, BadArgumentsNameTheArgument) {
  std::vector<float> logits(2 * kCeVocab);
  const std::vector<int32_t> targets = {1, 7};
  testing::expect_error_naming(
      [&] {
        cpu::cross_entropy_forward_backward(logits.data(), targets.data(), 2, kCeVocab,
                                            cpu::kIgnoreIndex, 1.0f, logits.data());
      },
      {"targets[1]", "7"});
  testing::expect_error_naming(
      [&] {
        cpu::cross_entropy_forward_backward(logits.data(), targets.data(), 2, 0, cpu::kIgnoreIndex,
                                            1.0f, logits.data());
      },
      {"vocab_size"});
}

TEST(CpuCrossEntropy, ThreadedSizesMatchNaiveAndDoNotDependOnThreadCount) {
  const int64_t rows = 40, vocab = 1001;  // rows * vocab forks threads
  const auto logits = random_vector<double>(rows * vocab, 5, -4, 4);
  std::vector<int32_t> targets(rows);
  for (int64_t i = 0; i < rows; ++i)
    targets[i] = i % 5 == 3 ? -100 : static_cast<int32_t>((i * 37) % vocab);
  double expect = 0;
  int count = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (targets[i] == -100) continue;
    double sum = 0;
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(logits[i * vocab + c]);
    expect += std::log(sum) - logits[i * vocab + targets[i]];
    ++count;
  }
  expect /= count;
  double loss[2];
  std::vector<double> grad[2];
  const int saved = omp_get_max_threads();
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    grad[t].assign(logits.size(), 0.0);
    loss[t] = cpu::cross_entropy_forward_backward(logits.data(), targets.data(), rows, vocab,
                                                  cpu::kIgnoreIndex, 1.0, grad[t].data());
  }
  omp_set_num_threads(saved);
  EXPECT_NEAR(loss[1], expect, 1e-12);
  EXPECT_EQ(loss[0], loss[1]);
  EXPECT_EQ(grad[0], grad[1]);
}

}  // namespace
}  // namespace moex
