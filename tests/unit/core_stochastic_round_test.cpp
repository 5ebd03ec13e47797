// f32_to_bf16_stochastic against an exhaustive count: over all 2^16 random values a finite float
// rounds up in magnitude exactly (dropped bits) times, so the mean of the rounded values is the
// float itself; special values keep their class.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "core/stochastic_round.h"

namespace moex {
namespace {

// The mean of the 2^16 roundings of f and how many went up in magnitude.
void all_roundings(float f, double* mean, int64_t* up) {
  double sum = 0;
  *up = 0;
  const uint16_t down = static_cast<uint16_t>(float_bits(f) >> 16);
  for (uint32_t r = 0; r < 65536; ++r) {
    const uint16_t h = f32_to_bf16_stochastic(f, r);
    ASSERT_TRUE(h == down || h == down + 1) << f << " rounded to " << h;
    *up += h != down;
    sum += bf16_to_f32(h);
  }
  *mean = sum / 65536;
}

TEST(StochasticRound, EveryFiniteValueIsItsRoundingsMean) {
  const float denormal = std::numeric_limits<float>::denorm_min() * 12345;
  for (const float f : {1.0f, 1.00390625f, 3.14159f, -3.14159f, 1e-20f, -7.5e5f, denormal,
                        -denormal, 3e38f}) {
    double mean = 0;
    int64_t up = 0;
    all_roundings(f, &mean, &up);
    EXPECT_EQ(up, static_cast<int64_t>(float_bits(f) & 0xffffu)) << f;
    EXPECT_NEAR(mean, f, std::fabs(f) * 1e-12) << f;
  }
}

TEST(StochasticRound, SpecialValuesKeepTheirClass) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const uint32_t r : {0u, 0x7fffu, 0xffffu}) {
    EXPECT_EQ(f32_to_bf16_stochastic(inf, r), 0x7f80u);
    EXPECT_EQ(f32_to_bf16_stochastic(-inf, r), 0xff80u);
    EXPECT_EQ(f32_to_bf16_stochastic(0.0f, r), 0x0000u);
    EXPECT_EQ(f32_to_bf16_stochastic(-0.0f, r), 0x8000u);
    // A NaN whose payload is only in the dropped bits stays a NaN (quiet), of either sign.
    EXPECT_EQ(f32_to_bf16_stochastic(bits_float(0x7f800001u), r), 0x7fc0u);
    EXPECT_EQ(f32_to_bf16_stochastic(bits_float(0xff800001u), r), 0xffc0u);
    EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16_stochastic(std::nanf(""), r))));
  }
  // Above the largest bf16 (0x7f7f) a finite value becomes infinite when it rounds up.
  const float top = bits_float(0x7f7f8000u);
  EXPECT_EQ(f32_to_bf16_stochastic(top, 0), 0x7f7fu);
  EXPECT_EQ(f32_to_bf16_stochastic(top, 0xffffu), 0x7f80u);
}

}  // namespace
}  // namespace moex
