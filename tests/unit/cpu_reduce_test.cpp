// sum_of_squares: equals a naive long-double loop, and gives identical bits for any thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "core/rng.h"
#include "cpu/reduce.h"

namespace moex::cpu {
namespace {

std::vector<float> random_values(int64_t n, uint64_t seed) {
  Rng rng(seed, 0);
  std::vector<float> x(static_cast<size_t>(n));
  // Magnitudes over six decades, so that the summation order changes the rounding.
  for (float& v : x) v = rng.normal() * std::pow(10.0f, 3.0f * rng.normal());
  return x;
}

TEST(SumOfSquares, MatchesANaiveLoop) {
  for (int64_t n : {0, 1, 7, 65536, 65537, 300001}) {
    const std::vector<float> x = random_values(n, 11 + n);
    long double expected = 0;
    for (float v : x) expected += static_cast<long double>(v) * v;
    EXPECT_NEAR(sum_of_squares(x.data(), n), static_cast<double>(expected),
                1e-12 * static_cast<double>(expected) + 1e-300)
        << "n=" << n;
  }
}

TEST(SumOfSquares, SameBitsForAnyThreadCount) {
  const int64_t n = 1000003;
  const std::vector<float> x = random_values(n, 5);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = sum_of_squares(x.data(), n);
  for (int threads : {2, 3, 5, 8}) {
    omp_set_num_threads(threads);
    EXPECT_EQ(sum_of_squares(x.data(), n), one) << threads << " threads";
  }
  omp_set_num_threads(saved);
}

}  // namespace
}  // namespace moex::cpu
