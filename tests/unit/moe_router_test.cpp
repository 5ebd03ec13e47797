// Router stages: selection rules, aux- and z-loss values on hand-written logits (expected values
// computed independently with naive loops here), and the router's backward against central
// finite differences in double with the selection held fixed.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "gradcheck.h"
#include "moe/dispatch_plan.h"
#include "moe/router.h"

namespace moex::moe {
namespace {

using moex::testing::numeric_gradient;
using moex::testing::random_vector;
using moex::testing::relative_l2;

// Hand-written logits: 6 tokens, 4 experts.
const std::vector<double> kLogits = {
    2.0,  1.0,  0.0,  -1.0,  //
    0.5,  3.0,  0.1,  0.2,   //
    -1.0, 0.0,  2.5,  0.3,   //
    1.5,  1.4,  -0.5, 0.0,   //
    0.0,  0.2,  0.1,  1.0,   //
    3.0,  -2.0, 0.0,  2.9,   //
};
constexpr int64_t kT = 6, kE = 4;

std::vector<double> naive_softmax(const std::vector<double>& z, int64_t t_count, int64_t e_count) {
  std::vector<double> p(z.size());
  for (int64_t t = 0; t < t_count; ++t) {
    double sum = 0;
    for (int64_t e = 0; e < e_count; ++e) sum += std::exp(z[t * e_count + e]);
    for (int64_t e = 0; e < e_count; ++e) p[t * e_count + e] = std::exp(z[t * e_count + e]) / sum;
  }
  return p;
}

std::vector<int32_t> select(const std::vector<double>& z, const std::vector<double>& s, int k,
                            ScoreFunc score_func = ScoreFunc::kSoftmax,
                            const double* bias = nullptr) {
  const int64_t t_count = static_cast<int64_t>(z.size()) / kE;
  std::vector<int32_t> idx(t_count * k);
  RouterSelectParams params;
  params.top_k = k;
  params.score_func = score_func;
  router_select<double>(z.data(), s.data(), bias, t_count, kE, params, idx.data());
  return idx;
}

TEST(Router, TopKSelectionByHand) {
  std::vector<double> s(kT * kE);
  router_scores<double>(kLogits.data(), kT, kE, ScoreFunc::kSoftmax, s.data());
  const auto idx = select(kLogits, s, 2);
  const std::vector<int32_t> expected = {0, 1, 1, 0, 2, 3, 0, 1, 3, 1, 0, 3};
  EXPECT_EQ(idx, expected);
}

TEST(Router, SigmoidBiasChangesSelectionNotWeights) {
  std::vector<double> s(kT * kE);
  router_scores<double>(kLogits.data(), kT, kE, ScoreFunc::kSigmoid, s.data());
  EXPECT_NEAR(s[1], 1 / (1 + std::exp(-1.0)), 1e-15);
  const double bias[kE] = {0, 0, 0, 5.0};  // expert 3 is always picked first
  const auto idx = select(kLogits, s, 2, ScoreFunc::kSigmoid, bias);
  for (int64_t t = 0; t < kT; ++t) EXPECT_EQ(idx[t * 2], 3);
  std::vector<double> gates(kT * 2);
  router_gates<double>(s.data(), idx.data(), nullptr, kT, kE, 2, {}, gates.data());
  EXPECT_NEAR(gates[0], 1 / (1 + std::exp(1.0)), 1e-15);  // sigmoid(z[0,3] = -1), the bias left out
}

TEST(Router, GumbelSecondExpertAndRsample) {
  std::vector<double> s(kT * kE);
  router_scores<double>(kLogits.data(), kT, kE, ScoreFunc::kSoftmax, s.data());
  RouterSelectParams params;
  params.top_k = 2;
  params.gumbel_second_expert = true;
  std::vector<int32_t> a(kT * 2), b(kT * 2);
  int differs = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    params.seed = seed;
    router_select<double>(kLogits.data(), s.data(), nullptr, kT, kE, params, a.data());
    router_select<double>(kLogits.data(), s.data(), nullptr, kT, kE, params, b.data());
    EXPECT_EQ(a, b);  // same seed, same draw
    const auto greedy = select(kLogits, s, 2);
    for (int64_t t = 0; t < kT; ++t) {
      EXPECT_EQ(a[t * 2], greedy[t * 2]);  // first choice is the argmax
      EXPECT_NE(a[t * 2 + 1], a[t * 2]);   // second never repeats it
      differs += a[t * 2 + 1] != greedy[t * 2 + 1];
    }
  }
  EXPECT_GT(differs, 0);
  // RSample: argmax(z + Gumbel) picks a non-argmax expert for some seeds, deterministically.
  params = RouterSelectParams{};
  params.rsample = true;
  int rsample_differs = 0;
  for (uint64_t seed = 0; seed < 20; ++seed) {
    params.seed = seed;
    std::vector<int32_t> one(kT);
    router_select<double>(kLogits.data(), s.data(), nullptr, kT, kE, params, one.data());
    const auto greedy = select(kLogits, s, 1);
    for (int64_t t = 0; t < kT; ++t) rsample_differs += one[t] != greedy[t];
  }
  EXPECT_GT(rsample_differs, 0);
}

// Expected aux losses written from the formulas with naive loops.
TEST(Router, AuxLossValuesMatchFormulas) {
  const auto p = naive_softmax(kLogits, kT, kE);
  std::vector<double> s(kT * kE);
  router_scores<double>(kLogits.data(), kT, kE, ScoreFunc::kSoftmax, s.data());
  for (size_t i = 0; i < p.size(); ++i) ASSERT_NEAR(s[i], p[i], 1e-15);
  std::vector<double> mean_p(kE, 0);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t e = 0; e < kE; ++e) mean_p[e] += p[t * kE + e] / kT;

  // top-1 argmax per token: 0, 1, 2, 0, 3, 0
  const double frac1[kE] = {3.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6};
  double top1 = 0;
  for (int e = 0; e < kE; ++e) top1 += mean_p[e] * frac1[e];
  top1 *= kE;
  auto idx1 = select(kLogits, s, 1);
  EXPECT_NEAR(router_aux_loss<double>(s.data(), idx1.data(), kT, kE, 1, AuxLossType::kDeepSpeed,
                                      ScoreFunc::kSoftmax, 0, nullptr),
              top1, 1e-14);

  // top-2 DeepSpeed: mean(me * ce) * E * E with ce from first choices only = the same number.
  auto idx2 = select(kLogits, s, 2);
  double me_ce = 0;
  for (int e = 0; e < kE; ++e) me_ce += mean_p[e] * frac1[e] / kE;
  EXPECT_NEAR(router_aux_loss<double>(s.data(), idx2.data(), kT, kE, 2, AuxLossType::kDeepSpeed,
                                      ScoreFunc::kSoftmax, 0, nullptr),
              me_ce * kE * kE, 1e-14);

  // top-3 DeepSpeed topkgating: mean_e(me * ce) * E^2 / k with ce from all choices.
  auto idx3 = select(kLogits, s, 3);
  std::vector<double> ce3(kE, 0);
  for (int64_t t = 0; t < kT; ++t)
    for (int j = 0; j < 3; ++j) ce3[idx3[t * 3 + j]] += 1.0 / kT;
  double topk = 0;
  for (int e = 0; e < kE; ++e) topk += mean_p[e] * ce3[e] / kE;
  topk *= kE * kE / 3.0;
  EXPECT_NEAR(router_aux_loss<double>(s.data(), idx3.data(), kT, kE, 3, AuxLossType::kDeepSpeed,
                                      ScoreFunc::kSoftmax, 0, nullptr),
              topk, 1e-14);

  // HF Mixtral load_balancing_loss_func, k=2: sum over [k,E] of tokens_per_expert * router_prob,
  // times E.
  std::vector<double> tokens_per_expert(2 * kE,
                                        0);  // [k, E]: mean over tokens of the one-hot of choice j
  for (int64_t t = 0; t < kT; ++t)
    for (int j = 0; j < 2; ++j) tokens_per_expert[j * kE + idx2[t * 2 + j]] += 1.0 / kT;
  double mixtral = 0;
  for (int j = 0; j < 2; ++j)
    for (int e = 0; e < kE; ++e) mixtral += tokens_per_expert[j * kE + e] * mean_p[e];
  mixtral *= kE;
  EXPECT_NEAR(router_aux_loss<double>(s.data(), idx2.data(), kT, kE, 2, AuxLossType::kMixtral,
                                      ScoreFunc::kSoftmax, 0, nullptr),
              mixtral, 1e-14);
  // A concrete number, so a shared mistake in the naive loops above would still show.
  EXPECT_NEAR(top1, 4 * (mean_p[0] * 0.5 + (mean_p[1] + mean_p[2] + mean_p[3]) / 6), 1e-15);

  // z-loss: mean_t(logsumexp(z_t)^2).
  double z_expected = 0;
  for (int64_t t = 0; t < kT; ++t) {
    double sum = 0;
    for (int64_t e = 0; e < kE; ++e) sum += std::exp(kLogits[t * kE + e]);
    z_expected += std::log(sum) * std::log(sum) / kT;
  }
  EXPECT_NEAR(router_z_loss<double>(kLogits.data(), kT, kE, 0, nullptr), z_expected, 1e-13);
  const double row0 = std::log(std::exp(2.0) + std::exp(1.0) + 1 + std::exp(-1.0));  // 2.4401896...
  EXPECT_NEAR(row0, 2.44018969, 1e-8);
}

// The router chain from (x, wg) to loss = sum w.gates + a*aux + b*zloss with the selection and
// the drop mask held fixed; its analytic gradient against central differences.
struct RouterCase {
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  int top_k = 2;
  bool renormalize = false;
  bool after_drop = false;
  bool bias = false;
  float jitter = 0;
  AuxLossType aux = AuxLossType::kDeepSpeed;
  double aux_coef = 0.3, z_coef = 0.2;
};

void check_router_grad(const RouterCase& c) {
  const int64_t t_count = 7, d = 5, e_count = 4;
  const int k = c.top_k;
  std::vector<double> x = random_vector<double>(t_count * d, 1);
  std::vector<double> wg = random_vector<double>(e_count * d, 2);
  const std::vector<double> bias = random_vector<double>(e_count, 3, -0.5, 0.5);
  const std::vector<double> w = random_vector<double>(t_count * k, 4);
  std::vector<double> u(t_count * d), xj(t_count * d), z(t_count * e_count), s(t_count * e_count);
  std::vector<double> gates(t_count * k);
  std::vector<int32_t> idx(t_count * k);
  std::vector<int32_t> slot(t_count * k, 0);
  slot[1] = -1;  // some routes dropped (held fixed)
  slot[4] = -1;
  const RouterGateParams gp{c.renormalize, c.after_drop};

  auto front = [&] {
    if (c.jitter > 0) {
      router_jitter<double>(x.data(), t_count, d, c.jitter, 9, 1, u.data(), xj.data());
    } else {
      xj = x;
    }
    router_logits<double>(xj.data(), wg.data(), t_count, d, e_count, z.data());
    router_scores<double>(z.data(), t_count, e_count, c.score_func, s.data());
  };
  front();
  RouterSelectParams sp;
  sp.top_k = k;
  sp.score_func = c.score_func;
  router_select<double>(z.data(), s.data(), c.bias ? bias.data() : nullptr, t_count, e_count, sp,
                        idx.data());

  auto loss = [&] {
    front();
    router_gates<double>(s.data(), idx.data(), slot.data(), t_count, e_count, k, gp, gates.data());
    double l = moex::testing::project(gates, w);
    l += c.aux_coef * router_aux_loss<double>(s.data(), idx.data(), t_count, e_count, k, c.aux,
                                              c.score_func, 0, nullptr);
    l += c.z_coef * router_z_loss<double>(z.data(), t_count, e_count, 0, nullptr);
    return l;
  };
  loss();
  std::vector<double> ds(t_count * e_count, 0), dz(t_count * e_count, 0), dwg(e_count * d),
      dx(t_count * d, 0);
  router_gates_backward<double>(s.data(), idx.data(), slot.data(), w.data(), t_count, e_count, k,
                                gp, ds.data());
  router_aux_loss<double>(s.data(), idx.data(), t_count, e_count, k, c.aux, c.score_func,
                          c.aux_coef, ds.data());
  router_scores_backward<double>(s.data(), ds.data(), t_count, e_count, c.score_func, dz.data());
  router_z_loss<double>(z.data(), t_count, e_count, c.z_coef, dz.data());
  router_logits_backward<double>(dz.data(), xj.data(), wg.data(), c.jitter > 0 ? u.data() : nullptr,
                                 t_count, d, e_count, dwg.data(), dx.data());

  EXPECT_LT(relative_l2(dwg, numeric_gradient(wg, loss)), 1e-6);
  EXPECT_LT(relative_l2(dx, numeric_gradient(x, loss)), 1e-6);
}

TEST(RouterBackward, SoftmaxTop2) {
  check_router_grad({});
}
TEST(RouterBackward, SoftmaxTop1Renormalized) {
  check_router_grad({ScoreFunc::kSoftmax, 1, true});
}
TEST(RouterBackward, SoftmaxTop3Renormalized) {
  check_router_grad({ScoreFunc::kSoftmax, 3, true});
}
TEST(RouterBackward, RenormalizedAfterDrop) {
  check_router_grad({ScoreFunc::kSoftmax, 2, true, true});
}
TEST(RouterBackward, MixtralAux) {
  RouterCase c;
  c.aux = AuxLossType::kMixtral;
  c.renormalize = true;
  check_router_grad(c);
}
TEST(RouterBackward, SigmoidWithBias) {
  check_router_grad({ScoreFunc::kSigmoid, 2, false, false, true});
}
TEST(RouterBackward, SigmoidBiasRenormalized) {
  check_router_grad({ScoreFunc::kSigmoid, 3, true, false, true});
}
TEST(RouterBackward, JitterScalesRouterInput) {
  RouterCase c;
  c.jitter = 0.1f;
  check_router_grad(c);
}

TEST(Router, JitterIsReproducibleAndBounded) {
  const int64_t n = 1000;
  std::vector<double> x(n, 1.0), u(n), xj(n), u2(n);
  router_jitter<double>(x.data(), 10, 100, 0.01f, 5, 3, u.data(), xj.data());
  router_jitter<double>(x.data(), 10, 100, 0.01f, 5, 3, u2.data(), xj.data());
  EXPECT_EQ(u, u2);
  double lo = 2, hi = 0;
  for (double v : u) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_GE(lo, 0.99);
  EXPECT_LE(hi, 1.01);
  EXPECT_LT(lo, 0.991);
  EXPECT_GT(hi, 1.009);
  router_jitter<double>(x.data(), 10, 100, 0.01f, 6, 3, u2.data(), xj.data());
  EXPECT_NE(u, u2);
}

}  // namespace
}  // namespace moex::moe
