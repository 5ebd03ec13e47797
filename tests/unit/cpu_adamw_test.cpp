// AdamW against a hand-written two-step reference (decoupled decay, bias correction) and the
// known first-step property |update| ~= lr; bf16 moments against the fp32 step and a long fp32 run.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "core/stochastic_round.h"
#include "cpu/adamw.h"
#include "cpu_kernel_checks.h"
#include "gradcheck.h"

namespace moex {
namespace {

using testing::random_vector;

TEST(CpuAdamW, TwoStepsMatchHandWrittenReference) {
  const int64_t n = 37;  // odd: exercises the vector loop's remainder
  cpu::AdamWConfig cfg;
  cfg.lr = 0.05;
  cfg.beta1 = 0.8;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-6;
  cfg.weight_decay = 0.1;
  const auto p0 = random_vector<double>(n, 1, -1, 1);
  const auto g1 = random_vector<double>(n, 2, -1, 1);
  const auto g2 = random_vector<double>(n, 3, -1, 1);

  // Reference, element by element, spelled out for steps 1 and 2.
  std::vector<double> expect(n), expect_m(n), expect_v(n);
  for (int64_t i = 0; i < n; ++i) {
    double p = p0[i];
    // step 1
    p = p - 0.05 * 0.1 * p;
    double m = 0.2 * g1[i];
    double v = 0.05 * g1[i] * g1[i];
    p -= 0.05 * (m / 0.2) / (std::sqrt(v / 0.05) + 1e-6);
    // step 2: bias corrections 1 - 0.8^2 = 0.36 and 1 - 0.95^2 = 0.0975
    p = p - 0.05 * 0.1 * p;
    m = 0.8 * m + 0.2 * g2[i];
    v = 0.95 * v + 0.05 * g2[i] * g2[i];
    p -= 0.05 * (m / 0.36) / (std::sqrt(v / 0.0975) + 1e-6);
    expect[i] = p;
    expect_m[i] = m;
    expect_v[i] = v;
  }

  std::vector<double> p = p0, m(n, 0.0), v(n, 0.0);
  cpu::adamw_step(p.data(), g1.data(), m.data(), v.data(), n, 1, cfg);
  cpu::adamw_step(p.data(), g2.data(), m.data(), v.data(), n, 2, cfg);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(p[i], expect[i], 1e-14) << i;
    EXPECT_NEAR(m[i], expect_m[i], 1e-15) << i;
    EXPECT_NEAR(v[i], expect_v[i], 1e-15) << i;
  }

  std::vector<float> pf = testing::cast_vector<float>(p0), mf(n, 0.f), vf(n, 0.f);
  const auto g1f = testing::cast_vector<float>(g1), g2f = testing::cast_vector<float>(g2);
  cpu::adamw_step(pf.data(), g1f.data(), mf.data(), vf.data(), n, 1, cfg);
  cpu::adamw_step(pf.data(), g2f.data(), mf.data(), vf.data(), n, 2, cfg);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(pf[i], expect[i], 1e-6) << i;
}

// ZeRO-Offload's fused upload buffer: the same update, and each updated weight rounded to bf16 as
// the separate cast rounds it (core/dtype.h: to nearest, ties to even). Large enough for the
// threaded loop.
TEST(CpuAdamW, Bf16CopyHoldsTheUpdatedWeightsRounded) {
  const int64_t n = 70001;
  cpu::AdamWConfig cfg;
  cfg.lr = 0.01;
  cfg.weight_decay = 0.1;
  const auto p0 = random_vector<float>(n, 6, -2, 2);
  const auto g = random_vector<float>(n, 7, -1, 1);
  std::vector<float> p = p0, m(n, 0.f), v(n, 0.f), p_ref = p0, m_ref(n, 0.f), v_ref(n, 0.f);
  std::vector<uint16_t> copy(n, 0x7fc0);  // NaN: every element must be written
  cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, 1, cfg, copy.data());
  cpu::adamw_step(p_ref.data(), g.data(), m_ref.data(), v_ref.data(), n, 1, cfg);
  int64_t rounded_up = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(p[i], p_ref[i]) << i;
    ASSERT_EQ(m[i], m_ref[i]) << i;
    ASSERT_EQ(v[i], v_ref[i]) << i;
    ASSERT_EQ(copy[i], f32_to_bf16(p_ref[i])) << i;
    rounded_up += std::fabs(bf16_to_f32(copy[i])) > std::fabs(p_ref[i]);
  }
  EXPECT_GT(rounded_up, n / 4) << "rounded to nearest, not truncated";
}

// bf16 weights and gradients (ZeRO-Offload's host step of a bf16 master): the step is the fp32
// one on the widened values, and each stored weight is that result rounded stochastically with
// the bits the CUDA kernel uses (adam_weight_rounding_bits of the element's moment bits), with
// fp32 and with bf16 moments; most weights move.
TEST(CpuAdamW, Bf16WeightsStepLikeFp32AndRoundWithTheKernelsBits) {
  const int64_t n = 50003;
  cpu::AdamWConfig cfg;
  cfg.lr = 3e-3;
  cfg.weight_decay = 0.1;
  cfg.grad_scale = 0.8;
  const int64_t step = 4;
  std::vector<uint16_t> p16(n), g16(n);
  std::vector<float> p_wide(n), g_wide(n);
  const auto p_init = random_vector<float>(n, 30, -0.05f, 0.05f);
  const auto g_init = random_vector<float>(n, 31, -2, 2);
  for (int64_t i = 0; i < n; ++i) {
    p16[i] = f32_to_bf16(p_init[i]);
    g16[i] = f32_to_bf16(g_init[i]);
    p_wide[i] = bf16_to_f32(p16[i]);
    g_wide[i] = bf16_to_f32(g16[i]);
  }
  const auto m_init = random_vector<float>(n, 32, -0.1f, 0.1f);
  const auto v_init = random_vector<float>(n, 33, 1e-4f, 1e-2f);
  auto check = [&](auto moment_zero) {
    using M = decltype(moment_zero);
    std::vector<M> m(n), v(n);
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (sizeof(M) == 2) {
        m[i] = f32_to_bf16(m_init[i]);
        v[i] = f32_to_bf16(v_init[i]);
      } else {
        m[i] = m_init[i];
        v[i] = v_init[i];
      }
    }
    std::vector<M> m_ref = m, v_ref = v;
    std::vector<uint16_t> p = p16;
    std::vector<float> p_ref = p_wide;
    cpu::adamw_step(p.data(), g16.data(), m.data(), v.data(), n, step, cfg);
    cpu::adamw_step(p_ref.data(), g_wide.data(), m_ref.data(), v_ref.data(), n, step, cfg);
    int64_t moved = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(m[i], m_ref[i]) << i;
      ASSERT_EQ(v[i], v_ref[i]) << i;
      const uint32_t bits = adam_weight_rounding_bits(
          adam_rounding_bits(g_wide[i], p_wide[i], static_cast<uint32_t>(step)));
      ASSERT_EQ(p[i], f32_to_bf16_stochastic(p_ref[i], bits)) << i;
      moved += p[i] != p16[i];
    }
    EXPECT_GT(moved, n / 2) << "the weights were not updated";
  };
  check(float{});
  check(uint16_t{});
}

// Moments stored as bf16: the step computes with the fp32 moments before rounding (so the weights
// are the fp32-moment step's), and each stored moment is one of the two bf16 values around the fp32
// one, picked at random: about half rounded up, about a quarter not the nearest (none when rounding
// to nearest, half when truncating).
TEST(CpuAdamW, Bf16MomentsStepLikeFp32AndStoreARandomNeighbour) {
  const int64_t n = 70001;
  cpu::AdamWConfig cfg;
  cfg.lr = 0.01;
  cfg.weight_decay = 0.1;
  cfg.grad_scale = 0.7;
  const auto p0 = random_vector<float>(n, 16, -2, 2);
  const auto g = random_vector<float>(n, 17, -1, 1);
  const auto m_init = random_vector<float>(n, 18, -0.1f, 0.1f);
  const auto v_init = random_vector<float>(n, 19, 1e-4f, 1e-2f);
  std::vector<uint16_t> m16(n), v16(n);
  std::vector<float> m32(n), v32(n);
  for (int64_t i = 0; i < n; ++i) {
    m16[i] = f32_to_bf16(m_init[i]);
    v16[i] = f32_to_bf16(v_init[i]);
    m32[i] = bf16_to_f32(m16[i]);
    v32[i] = bf16_to_f32(v16[i]);
  }
  std::vector<float> p = p0, p_ref = p0;
  std::vector<uint16_t> copy(n, 0x7fc0);
  cpu::adamw_step(p.data(), g.data(), m16.data(), v16.data(), n, 5, cfg, copy.data());
  cpu::adamw_step(p_ref.data(), g.data(), m32.data(), v32.data(), n, 5, cfg);
  int64_t up = 0, not_nearest = 0, inexact = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(p[i], p_ref[i]) << i;
    ASSERT_EQ(copy[i], f32_to_bf16(p_ref[i])) << i;
    for (const auto& [stored, exact] : {std::pair{m16[i], m32[i]}, std::pair{v16[i], v32[i]}}) {
      const float s = bf16_to_f32(stored);
      // Truncation toward zero and one unit up in magnitude bracket the exact value.
      const uint16_t down = static_cast<uint16_t>(float_bits(exact) >> 16);
      ASSERT_TRUE(stored == down || stored == down + 1) << i << ": " << s << " for " << exact;
      if (s == exact) continue;
      ++inexact;
      up += stored != down;
      not_nearest += stored != f32_to_bf16(exact);
    }
  }
  ASSERT_GT(inexact, n);
  EXPECT_NEAR(static_cast<double>(up) / inexact, 0.5, 0.05);
  EXPECT_NEAR(static_cast<double>(not_nearest) / inexact, 0.25, 0.05);
}

// Why the rounding is stochastic: with beta2 = 0.999 a second moment four times g^2 shrinks by
// 0.075 % a step, under half a bf16 unit, so rounding to nearest would keep it where it is. Stored
// with stochastic rounding it follows the fp32 run over 1500 steps: the mean over elements within
// 1 %; one element's rounding noise (about 0.4 units a step, remembered over ~1/(1 - beta2) steps)
// is about 5 % rms here.
TEST(CpuAdamW, Bf16MomentsFollowASlowlyDecayingSecondMoment) {
  const int64_t n = 4096;
  cpu::AdamWConfig cfg;
  cfg.lr = 1e-3;
  cfg.beta2 = 0.999;
  cfg.weight_decay = 0;
  const auto g = random_vector<float>(n, 20, 0.5f, 1.0f);
  std::vector<float> p32 = random_vector<float>(n, 21, -1, 1), p16 = p32, m32(n, 0.f), v32(n);
  std::vector<uint16_t> m16(n, 0), v16(n);
  for (int64_t i = 0; i < n; ++i) {
    v16[i] = f32_to_bf16(4.0f * g[i] * g[i]);
    v32[i] = bf16_to_f32(v16[i]);
  }
  for (int64_t step = 1; step <= 1500; ++step) {
    cpu::adamw_step(p32.data(), g.data(), m32.data(), v32.data(), n, step, cfg);
    cpu::adamw_step(p16.data(), g.data(), m16.data(), v16.data(), n, step, cfg);
  }
  double ratio_sum = 0, worst = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double r = bf16_to_f32(v16[i]) / v32[i];
    ratio_sum += r;
    sq += (r - 1) * (r - 1);
    worst = std::max(worst, std::fabs(r - 1));
  }

  ASSERT_LT(v32[0], 0.5f * 4.0f * g[0] * g[0]) << "the fp32 moment decays";
  EXPECT_NEAR(ratio_sum / n, 1.0, 0.01);
  EXPECT_LT(std::sqrt(sq / n), 0.08);
  EXPECT_LT(worst, 0.3);
}

TEST(CpuAdamW, FirstStepMovesEachParameterByLrAgainstTheGradientSign) {
  // With bias correction, m_hat = g and v_hat = g^2 on step 1, so the step is lr * g / |g|.
  const int64_t n = 9;
  cpu::AdamWConfig cfg;
  cfg.lr = 0.01;
  cfg.eps = 0;
  cfg.weight_decay = 0;
  const auto p0 = random_vector<double>(n, 4);
  const auto g = random_vector<double>(n, 5, -3, 3);
  std::vector<double> p = p0, m(n, 0.0), v(n, 0.0);
  cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, 1, cfg);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(p[i], p0[i] - 0.01 * (g[i] > 0 ? 1 : -1), 1e-14);
}

TEST(CpuAdamW, WeightDecayIsDecoupledAndGradScaleApplies) {
  // Zero gradient: Adam's part is 0, only p *= 1 - lr * wd remains (L2-in-the-gradient would
  // instead move p by about lr).
  cpu::AdamWConfig cfg;
  cfg.lr = 0.1;
  cfg.weight_decay = 0.5;
  std::vector<double> p = {2.0, -4.0}, g = {0.0, 0.0}, m(2, 0.0), v(2, 0.0);
  cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), 2, 1, cfg);
  EXPECT_DOUBLE_EQ(p[0], 2.0 * 0.95);
  EXPECT_DOUBLE_EQ(p[1], -4.0 * 0.95);
  // grad_scale multiplies the gradient before the moments.
  cfg.grad_scale = 0.5;
  std::vector<double> g2 = {4.0, -2.0}, m2(2, 0.0), v2(2, 0.0), p2 = {1.0, 1.0};
  cpu::adamw_step(p2.data(), g2.data(), m2.data(), v2.data(), 2, 1, cfg);
  EXPECT_DOUBLE_EQ(m2[0], 0.1 * 2.0);
  EXPECT_DOUBLE_EQ(v2[1], 0.001 * 1.0);
}

TEST(CpuAdamW, BadArgumentsNameTheArgument) {
  std::vector<float> p(3), g(3), m(3), v(3);
  cpu::AdamWConfig cfg;
  testing::expect_error_naming(
      [&] { cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), 3, 0, cfg); }, {"step"});
  cfg.beta2 = 1.0;
  testing::expect_error_naming(
      [&] { cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), 3, 1, cfg); }, {"beta2"});
  cfg = cpu::AdamWConfig();
  cfg.lr = -1;
  testing::expect_error_naming(
      [&] { cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), 3, 1, cfg); }, {"lr"});
  cfg = cpu::AdamWConfig();
  testing::expect_error_naming(
      [&] {
        cpu::adamw_step(p.data(), static_cast<const float*>(nullptr), m.data(), v.data(), 3, 1,
                        cfg);
      },
      {"grad"});
}

}  // namespace
}  // namespace moex
