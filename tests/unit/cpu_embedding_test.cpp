// Embedding gather/scatter-add against a naive loop and central differences.
#include <gtest/gtest.h>
#include <omp.h>

#include "cpu/embedding.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::random_vector;
using testing::relative_l2;

TEST(CpuEmbedding, ForwardGathersRows) {
  const int64_t V = 11, d = 7, N = 9;
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7, 1, 1, 9, 3};
  const auto w = random_vector<double>(V * d, 1);
  std::vector<double> out(N * d, -7.0);
  cpu::embedding_forward(ids.data(), w.data(), N, V, d, out.data());
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < d; ++c) EXPECT_EQ(out[i * d + c], w[ids[i] * d + c]) << i << "," << c;

  const auto wf = testing::cast_vector<float>(w);
  std::vector<float> outf(N * d);
  cpu::embedding_forward(ids.data(), wf.data(), N, V, d, outf.data());
  for (int64_t i = 0; i < N * d; ++i) EXPECT_EQ(outf[i], static_cast<float>(out[i]));
}

TEST(CpuEmbedding, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const int64_t V = 6, d = 7, N = 9;  // repeated ids: rows 1 and 3 receive several tokens
  const std::vector<int32_t> ids = {3, 0, 5, 3, 1, 1, 4, 3, 1};
  auto w = random_vector<double>(V * d, 2);
  const auto proj = random_vector<double>(N * d, 3);
  std::vector<double> out(N * d);
  auto loss = [&] {
    cpu::embedding_forward(ids.data(), w.data(), N, V, d, out.data());
    return testing::project(out, proj);
  };
  const auto numeric = testing::numeric_gradient(w, loss);
  const auto start = random_vector<double>(V * d, 4);  // dweight accumulates onto what is there
  std::vector<double> dw = start;
  cpu::embedding_backward(ids.data(), proj.data(), N, V, d, dw.data());
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= start[i];
  EXPECT_LT(relative_l2(dw, numeric), 1e-6);
  // Row 2 is never looked up: its gradient stays exactly zero.
  for (int64_t c = 0; c < d; ++c) EXPECT_EQ(dw[2 * d + c], 0.0);
}

TEST(CpuEmbedding, BadArgumentsNameTheArgument) {
  const std::vector<int32_t> ids = {0, 12, 1};
  std::vector<float> w(4 * 3), out(3 * 3);
  testing::expect_error_naming(
      [&] { cpu::embedding_forward(ids.data(), w.data(), 3, 4, 3, out.data()); }, {"ids[1]", "12"});
  const std::vector<int32_t> negative = {-1};
  testing::expect_error_naming(
      [&] { cpu::embedding_backward(negative.data(), out.data(), 1, 4, 3, w.data()); },
      {"ids[0]", "-1"});
  testing::expect_error_naming(
      [&] { cpu::embedding_forward(ids.data(), w.data(), 3, 4, 0, out.data()); }, {"dim"});
  testing::expect_error_naming(
      [&] { cpu::embedding_forward(ids.data(), w.data(), 3, 0, 3, out.data()); }, {"vocab_size"});
}

TEST(CpuEmbedding, ThreadedBackwardDoesNotDependOnThreadCount) {
  const int64_t V = 50, d = 300, N = 200;  // N * d forks threads; ids repeat
  std::vector<int32_t> ids(N);
  for (int64_t i = 0; i < N; ++i) ids[i] = static_cast<int32_t>((i * 7) % V);
  const auto dout = random_vector<double>(N * d, 5);
  std::vector<double> dw[2];
  const int saved = omp_get_max_threads();
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    dw[t].assign(V * d, 0.0);
    cpu::embedding_backward(ids.data(), dout.data(), N, V, d, dw[t].data());
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(dw[0], dw[1]);
  // Row 7's gradient is the sum of the tokens with id 7 (i * 7 % 50 == 7: i = 1, 51, 101, 151).
  for (int64_t c = 0; c < d; ++c) {
    const double expect =
        dout[1 * d + c] + dout[51 * d + c] + dout[101 * d + c] + dout[151 * d + c];
    EXPECT_NEAR(dw[1][7 * d + c], expect, 1e-14);
  }
}

}  // namespace
}  // namespace moex
