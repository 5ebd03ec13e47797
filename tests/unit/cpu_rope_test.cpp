// RoPE against the Hugging Face formula written out (x * cos + rotate_half(x) * sin), with a
// position offset, and its backward against central differences.
#include <gtest/gtest.h>

#include <cmath>

#include "cpu/rope.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::numeric_gradient;
using testing::project;
using testing::random_vector;
using testing::relative_l2;

// transformers' apply_rotary_pos_emb: emb = cat(freqs, freqs); q * cos(emb) + rotate_half(q) *
// sin(emb), rotate_half(q) = cat(-q[d/2:], q[:d/2]).
std::vector<double> naive_rope(const std::vector<double>& x, const cpu::RopeShape& s) {
  const int64_t D = s.head_dim, half = D / 2;
  std::vector<double> y(x.size());
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < s.seq_len; ++t)
      for (int64_t h = 0; h < s.num_heads; ++h) {
        const double* xh = &x[((b * s.seq_len + t) * s.num_heads + h) * D];
        double* yh = &y[((b * s.seq_len + t) * s.num_heads + h) * D];
        for (int64_t j = 0; j < D; ++j) {
          const double inv_freq = 1.0 / std::pow(s.theta, (2.0 * (j % half)) / D);
          const double angle = (s.start_pos + t) * inv_freq;
          const double rotated = j < half ? -xh[j + half] : xh[j - half];
          yh[j] = xh[j] * std::cos(angle) + rotated * std::sin(angle);
        }
      }
  return y;
}

cpu::RopeShape test_shape() {
  cpu::RopeShape s;
  s.batch = 2;
  s.seq_len = 5;
  s.num_heads = 3;
  s.head_dim = 6;
  s.start_pos = 0;
  s.theta = 500.0;  // small theta: high-index pairs still rotate visibly at these positions
  return s;
}

TEST(CpuRope, ForwardMatchesHuggingFaceFormula) {
  cpu::RopeShape s = test_shape();
  for (int64_t start : {0, 4}) {
    s.start_pos = start;
    const auto x = random_vector<double>(s.batch * s.seq_len * s.num_heads * s.head_dim, 1);
    const auto expect = naive_rope(x, s);
    std::vector<double> y(x.size());
    cpu::rope_forward(x.data(), s, y.data());
    EXPECT_LT(relative_l2(y, expect), 1e-13) << "start_pos " << start;
    std::vector<float> xf = testing::cast_vector<float>(x), yf(x.size());
    cpu::rope_forward(xf.data(), s, yf.data());
    EXPECT_LT(relative_l2(testing::cast_vector<double>(yf), expect), 1e-6);
    cpu::rope_forward(xf.data(), s, xf.data());  // in place
    EXPECT_EQ(xf, yf);
  }
}

TEST(CpuRope, StartPosMatchesTheTailOfALongerSequence) {
  cpu::RopeShape full = test_shape();
  full.batch = 1;
  full.seq_len = 7;
  const auto x = random_vector<double>(full.seq_len * full.num_heads * full.head_dim, 2);
  std::vector<double> y_full(x.size());
  cpu::rope_forward(x.data(), full, y_full.data());
  cpu::RopeShape tail = full;
  tail.seq_len = 2;
  tail.start_pos = 5;
  const int64_t row = full.num_heads * full.head_dim;
  std::vector<double> y_tail(2 * row);
  cpu::rope_forward(x.data() + 5 * row, tail, y_tail.data());
  for (int64_t i = 0; i < 2 * row; ++i) EXPECT_DOUBLE_EQ(y_tail[i], y_full[5 * row + i]);
}

TEST(CpuRope, BackwardMatchesFiniteDifferences) {
  cpu::RopeShape s = test_shape();
  s.start_pos = 3;
  auto x = random_vector<double>(s.batch * s.seq_len * s.num_heads * s.head_dim, 3);
  const auto proj = random_vector<double>(x.size(), 4);
  std::vector<double> y(x.size());
  auto loss = [&] {
    cpu::rope_forward(x.data(), s, y.data());
    return project(y, proj);
  };
  const auto numeric = numeric_gradient(x, loss);
  std::vector<double> dx(x.size());
  cpu::rope_backward(proj.data(), s, dx.data());
  EXPECT_LT(relative_l2(dx, numeric), 1e-6);
}

TEST(CpuRope, BadArgumentsNameTheArgument) {
  cpu::RopeShape s = test_shape();
  std::vector<float> x(s.batch * s.seq_len * s.num_heads * 7), y(x.size());
  s.head_dim = 7;
  testing::expect_error_naming([&] { cpu::rope_forward(x.data(), s, y.data()); }, {"head_dim"});
  s = test_shape();
  s.theta = 0;
  testing::expect_error_naming([&] { cpu::rope_backward(x.data(), s, y.data()); }, {"theta"});
  s = test_shape();
  s.start_pos = -1;
  testing::expect_error_naming([&] { cpu::rope_forward(x.data(), s, y.data()); }, {"start_pos"});
}

}  // namespace
}  // namespace moex
