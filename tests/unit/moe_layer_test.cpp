// The whole MoE layer: hand-computable outputs with scaled-identity experts, capacity in train
// and eval mode, dropless, argument checks, and forward+backward against central finite
// differences in double (routing held fixed) for every option group.
#include "moe/moe_layer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "gradcheck.h"

namespace moex {
namespace {

using moex::testing::numeric_gradient;
using moex::testing::random_vector;
using moex::testing::relative_l2;

std::vector<double> to_vec(const Tensor& t) {
  return {t.data<double>(), t.data<double>() + t.numel()};
}
void from_vec(const Tensor& t, const std::vector<double>& v) {
  std::copy(v.begin(), v.end(), t.data<double>());
}
Tensor tensor_of(const std::vector<double>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kF64);
  from_vec(t, v);
  return t;
}

// Expert e computes (e+1) x exactly: F = 2d, w1 = [I; -I], w2 = (e+1) [I, -I], and
// gelu(v) - gelu(-v) = v for both GELU forms. The router is Wg = I (d = E), so logits = x.
void make_scaled_identity_experts(MoELayer& layer) {
  const MoEConfig& c = layer.config();
  const int64_t d = c.hidden_size, f = c.ffn_size, num_e = c.num_experts;
  ASSERT_EQ(f, 2 * d);
  ASSERT_EQ(d, num_e);
  MoEWeights& w = layer.weights();
  double* w1 = w.w1.data<double>();  // [E, 2d, d]
  double* w2 = w.w2.data<double>();  // [E, d, 2d]
  double* wg = w.router.data<double>();
  std::fill(w1, w1 + w.w1.numel(), 0.0);
  std::fill(w2, w2 + w.w2.numel(), 0.0);
  std::fill(wg, wg + w.router.numel(), 0.0);
  for (int64_t e = 0; e < num_e; ++e) {
    wg[e * d + e] = 1.0;
    for (int64_t i = 0; i < d; ++i) {
      w1[(e * f + i) * d + i] = 1.0;
      w1[(e * f + d + i) * d + i] = -1.0;
      w2[(e * d + i) * f + i] = e + 1.0;
      w2[(e * d + i) * f + d + i] = -(e + 1.0);
    }
  }
}

MoEConfig hand_config(int k) {
  MoEConfig c;
  c.hidden_size = 3;
  c.ffn_size = 6;
  c.num_experts = 3;
  c.top_k = k;
  c.min_capacity = 0;
  return c;
}

// Five tokens; logits = x. Top-1 choices: 0, 1, 2, 0, 0.
const std::vector<double> kX = {
    2.0, 1.0, 0.5,  //
    0.1, 3.0, 0.2,  //
    1.0, 0.5, 4.0,  //
    5.0, 0.1, 0.2,  //
    3.0, 2.0, 0.0,  //
};

double softmax_at(const double* z, int n, int i) {
  double sum = 0;
  for (int j = 0; j < n; ++j) sum += std::exp(z[j]);
  return std::exp(z[i]) / sum;
}

TEST(MoELayerHand, Top1ScaledIdentityWithPositionDrops) {
  MoEConfig c = hand_config(1);
  c.capacity_factor_eval = 1.0f;  // C = ceil(5/3) = 2: expert 0 (tokens 0, 3, 4) drops token 4
  MoELayer layer(c, DType::kF64);
  make_scaled_identity_experts(layer);
  const auto& out = layer.forward(tensor_of(kX, Shape{5, 3}), {});
  EXPECT_EQ(out.capacity, 2);
  EXPECT_EQ(out.load, (std::vector<int64_t>{3, 1, 1}));
  EXPECT_EQ(out.counts, (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ(out.num_dropped, 1);
  const int expert[5] = {0, 1, 2, 0, -1};
  const double* y = out.y.data<double>();
  for (int t = 0; t < 5; ++t) {
    const double* x = &kX[t * 3];
    for (int i = 0; i < 3; ++i) {
      // top-1: y = p_e * (e+1) * x, DeepSpeed's top1gating leaves the weight unnormalized.
      const double expected =
          expert[t] < 0 ? 0.0 : softmax_at(x, 3, expert[t]) * (expert[t] + 1) * x[i];
      EXPECT_NEAR(y[t * 3 + i], expected, 1e-12) << "token " << t;
    }
  }
}

TEST(MoELayerHand, Top2RenormalizedFirstChoicesFirst) {
  MoEConfig c = hand_config(2);
  c.renormalize = true;
  c.capacity_factor_eval = 1.0f;  // C = ceil(5/3 * 2) = 4
  MoELayer layer(c, DType::kF64);
  make_scaled_identity_experts(layer);
  // Choices: t0 (0,1) t1 (1,2) t2 (2,0) t3 (0,2) t4 (0,1). Expert 0 gets first choices of t0, t3,
  // t4 (slots 0-2), then second choice of t2 (slot 3): all fit. Make it overflow with C = 3:
  c.capacity_factor_eval = 0.9f;  // ceil(5/3*0.9*2) = ceil(3.0) = 3
  MoELayer tight(c, DType::kF64);
  make_scaled_identity_experts(tight);
  const auto& out = tight.forward(tensor_of(kX, Shape{5, 3}), {});
  EXPECT_EQ(out.capacity, 3);
  EXPECT_EQ(out.load, (std::vector<int64_t>{4, 3, 3}));
  EXPECT_EQ(out.counts, (std::vector<int64_t>{3, 3, 3}));
  // Token 2's second choice (expert 0) is the one dropped: the first choices fill expert 0.
  const auto& slot = tight.routing().plan.slot;
  // routes (t, j):      t0     t1     t2      t3     t4
  EXPECT_EQ(slot, (std::vector<int32_t>{0, 1, 0, 1, 0, -1, 1, 2, 2, 2}));
  const int choice[5][2] = {{0, 1}, {1, 2}, {2, 0}, {0, 2}, {0, 1}};
  const double* y = out.y.data<double>();
  for (int t = 0; t < 5; ++t) {
    const double* x = &kX[t * 3];
    const double p0 = softmax_at(x, 3, choice[t][0]), p1 = softmax_at(x, 3, choice[t][1]);
    const bool drop1 = t == 2;
    for (int i = 0; i < 3; ++i) {
      // Renormalized over both selected routes (before dropping); the dropped one adds nothing.
      const double expected =
          (p0 * (choice[t][0] + 1) * x[i] + (drop1 ? 0.0 : p1 * (choice[t][1] + 1) * x[i])) /
          (p0 + p1);
      EXPECT_NEAR(y[t * 3 + i], expected, 1e-12) << "token " << t;
    }
  }
  // DeepSpeed's renormalization over the surviving routes: token 2 keeps all of its weight.
  c.renormalize_after_drop = true;
  MoELayer ds(c, DType::kF64);
  make_scaled_identity_experts(ds);
  const double* y2 = ds.forward(tensor_of(kX, Shape{5, 3}), {}).y.data<double>();
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(y2[2 * 3 + i], 3.0 * kX[2 * 3 + i], 1e-12);
}

TEST(MoELayerHand, DroplessDropsNothingAndEvalFactorIsUsed) {
  MoEConfig c = hand_config(1);
  c.capacity_factor_train = 0.5f;  // C = ceil(5/3*0.5) = 1
  c.capacity_factor_eval = 3.0f;   // C = 5
  MoELayer layer(c, DType::kF64);
  make_scaled_identity_experts(layer);
  const Tensor x = tensor_of(kX, Shape{5, 3});
  MoEForwardOptions train;
  train.training = true;
  EXPECT_EQ(layer.forward(x, train).capacity, 1);
  EXPECT_EQ(layer.forward(x, train).num_dropped, 2);
  EXPECT_EQ(layer.forward(x, {}).capacity, 5);
  EXPECT_EQ(layer.forward(x, {}).num_dropped, 0);
  c.dropless = true;
  MoELayer dropless(c, DType::kF64);
  make_scaled_identity_experts(dropless);
  const auto& out = dropless.forward(x, train);
  EXPECT_EQ(out.num_dropped, 0);
  EXPECT_EQ(out.capacity, 3);
  EXPECT_EQ(out.counts, out.load);
  const int expert[5] = {0, 1, 2, 0, 0};
  for (int t = 0; t < 5; ++t) {
    for (int i = 0; i < 3; ++i) {
      const double* xt = &kX[t * 3];
      EXPECT_NEAR(out.y.data<double>()[t * 3 + i],
                  softmax_at(xt, 3, expert[t]) * (expert[t] + 1) * xt[i], 1e-12);
    }
  }
}

TEST(MoELayer, BadArgumentsNameTheArgument) {
  auto message_of = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  MoEConfig c = hand_config(4);
  EXPECT_NE(message_of([&] { MoELayer l(c); }).find("top_k"), std::string::npos);
  c = hand_config(1);
  c.capacity_factor_train = 0;
  EXPECT_NE(message_of([&] { MoELayer l(c); }).find("capacity_factor_train"), std::string::npos);
  c = hand_config(1);
  c.min_capacity = -2;
  EXPECT_NE(message_of([&] { MoELayer l(c); }).find("min_capacity"), std::string::npos);
  c = hand_config(1);
  MoELayer layer(c, DType::kF64);
  EXPECT_NE(message_of([&] {
              layer.backward(Tensor::zeros(Shape{5, 3}, DType::kF64));
            }).find("before forward"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              layer.forward(Tensor::zeros(Shape{5, 3}, DType::kF32), {});
            }).find("x"),
            std::string::npos);
  EXPECT_NE(message_of([&] {
              layer.forward(Tensor::zeros(Shape{5, 4}, DType::kF64), {});
            }).find("x"),
            std::string::npos);
  EXPECT_THROW(layer.forward(Tensor::zeros(Shape{5, 4}, DType::kF64), {}), Error);
  layer.forward(tensor_of(kX, Shape{5, 3}), {});
  EXPECT_NE(message_of([&] {
              layer.backward(Tensor::zeros(Shape{4, 3}, DType::kF64));
            }).find("dy"),
            std::string::npos);
  EXPECT_NE(message_of([&] { MoELayer l(hand_config(1), DType::kBF16); }).find("dtype"),
            std::string::npos);
}

// ---- finite differences over the whole layer ----

void check_layer_grad(MoEConfig c, bool training, const char* name) {
  c.hidden_size = 4;
  c.ffn_size = 3;
  if (c.num_experts == 0) c.num_experts = 4;
  const int64_t num_t = 9;
  MoELayer layer(c, DType::kF64);
  layer.init_weights(17);
  if (layer.weights().selection_bias.defined()) {
    from_vec(layer.weights().selection_bias, random_vector<double>(c.num_experts, 5, -0.3, 0.3));
  }
  std::vector<double> x = random_vector<double>(num_t * c.hidden_size, 3, -1.5, 1.5);
  const std::vector<double> w = random_vector<double>(num_t * c.hidden_size, 4);
  MoEForwardOptions options;
  options.training = training;
  options.seed = 1234;
  options.offset = 7;
  const Tensor x_t = tensor_of(x, Shape{num_t, c.hidden_size});
  layer.forward(x_t, options);
  const MoERouting fixed = layer.routing();
  options.fixed_routing = &fixed;

  // Analytic gradients of L = <y, w> + weighted aux/z loss.
  layer.forward(x_t, options);
  const MoEGradients& g = layer.backward(tensor_of(w, Shape{num_t, c.hidden_size}));
  const std::vector<double> dx = to_vec(g.dx);
  std::vector<std::pair<std::string, std::vector<double>>> analytic;
  const MoEWeights& gw = g.weights;
  for (const auto& [pname, t] : layer.named_parameters()) {
    if (pname == "router.selection_bias") continue;
    const Tensor* gt = nullptr;
    if (pname == "router.weight") gt = &gw.router;
    if (pname == "experts.w1") gt = &gw.w1;
    if (pname == "experts.w2") gt = &gw.w2;
    if (pname == "residual_mlp.w1") gt = &gw.residual_w1;
    if (pname == "residual_mlp.w2") gt = &gw.residual_w2;
    if (pname == "residual_coefficient.weight") gt = &gw.residual_coef;
    if (pname == "shared_expert.w1") gt = &gw.shared_w1;
    if (pname == "shared_expert.w2") gt = &gw.shared_w2;
    if (pname == "shared_expert_gate.weight") gt = &gw.shared_gate;
    ASSERT_NE(gt, nullptr) << pname;
    analytic.emplace_back(pname, to_vec(*gt));
  }

  auto loss_with = [&](const Tensor& xin) {
    const MoEOutput& out = layer.forward(xin, options);
    return moex::testing::project(to_vec(out.y), w) + out.weighted_loss;
  };
  std::vector<double> xv = x;
  const auto num_dx = numeric_gradient(xv, [&] {
    return loss_with(tensor_of(xv, Shape{num_t, c.hidden_size}));
  });
  EXPECT_LT(relative_l2(dx, num_dx), 1e-6) << name << ": dx";
  for (const auto& [pname, grad] : analytic) {
    Tensor param;
    for (const auto& [n2, t] : layer.named_parameters())
      if (n2 == pname) param = t;
    std::vector<double> pv = to_vec(param);
    const auto num = numeric_gradient(pv, [&] {
      from_vec(param, pv);
      return loss_with(x_t);
    });
    from_vec(param, pv);
    double norm = 0;
    for (double v : num) norm += v * v;
    EXPECT_GT(norm, 0) << name << ": " << pname << " has no gradient to check";
    EXPECT_LT(relative_l2(grad, num), 1e-6) << name << ": " << pname;
  }
  EXPECT_GT(fixed.plan.num_kept(), 0);
}

TEST(MoELayerBackward, Top2GeluPositionDropsJitterAuxZ) {
  MoEConfig c;
  c.top_k = 2;
  c.capacity_factor_train = 0.6f;  // forces drops
  c.min_capacity = 0;
  c.jitter_eps = 0.05f;
  c.gumbel_second_expert = true;
  c.aux_loss_coef = 0.1f;
  c.z_loss_coef = 0.05f;
  check_layer_grad(c, true, "top2-gelu");
}

TEST(MoELayerBackward, Top1SwigluRsampleDropless) {
  MoEConfig c;
  c.activation = ExpertActivation::kSwiGLU;
  c.rsample = true;
  c.dropless = true;
  c.aux_loss_coef = 0.2f;
  check_layer_grad(c, true, "top1-swiglu-dropless");
}

TEST(MoELayerBackward, SigmoidBiasRenormalizedTop3) {
  MoEConfig c;
  c.num_experts = 5;
  c.top_k = 3;
  c.score_func = ScoreFunc::kSigmoid;
  c.selection_bias = true;
  c.renormalize = true;
  c.aux_loss_coef = 0.1f;
  c.capacity_factor_eval = 0.8f;
  c.min_capacity = 0;
  check_layer_grad(c, false, "sigmoid-top3");
}

TEST(MoELayerBackward, ProbsPolicyRenormalizedAfterDropExactGelu) {
  MoEConfig c;
  c.top_k = 2;
  c.drop_policy = DropPolicy::kProbs;
  c.renormalize = true;
  c.renormalize_after_drop = true;
  c.gelu_exact = true;
  c.capacity_factor_eval = 0.7f;
  c.min_capacity = 0;
  c.aux_loss_type = AuxLossType::kMixtral;
  c.aux_loss_coef = 0.3f;
  c.z_loss_coef = 0.1f;
  check_layer_grad(c, false, "probs-after-drop");
}

TEST(MoELayerBackward, RtsResidualPrMoE) {
  MoEConfig c;
  c.drop_policy = DropPolicy::kRts;
  c.capacity_factor_train = 0.8f;
  c.min_capacity = 0;
  c.residual = true;
  c.residual_ffn_size = 5;
  check_layer_grad(c, true, "residual");
}

TEST(MoELayerBackward, SharedExpertWithGateSwiglu) {
  MoEConfig c;
  c.top_k = 2;
  c.activation = ExpertActivation::kSwiGLU;
  c.renormalize = true;
  c.shared_ffn_size = 6;
  c.shared_gate = true;
  c.z_loss_coef = 0.1f;
  check_layer_grad(c, false, "shared-gated");
}

TEST(MoELayerBackward, SharedExpertUngatedWithResidual) {
  MoEConfig c;
  c.shared_ffn_size = 2;
  c.residual = true;
  check_layer_grad(c, false, "shared+residual");
}

TEST(MoELayer, FloatMatchesDouble) {
  MoEConfig c;
  c.hidden_size = 16;
  c.ffn_size = 24;
  c.num_experts = 4;
  c.top_k = 2;
  c.activation = ExpertActivation::kSwiGLU;
  c.shared_ffn_size = 8;
  MoELayer ld(c, DType::kF64), lf(c, DType::kF32);
  ld.init_weights(3);
  lf.init_weights(3);
  const auto xd = random_vector<double>(32 * 16, 8);
  Tensor xf = Tensor::empty(Shape{32, 16}, DType::kF32);
  for (size_t i = 0; i < xd.size(); ++i) xf.data<float>()[i] = static_cast<float>(xd[i]);
  const auto& od = ld.forward(tensor_of(xd, Shape{32, 16}), {});
  const auto& of = lf.forward(xf, {});
  ASSERT_EQ(ld.routing().topk_idx, lf.routing().topk_idx);
  std::vector<double> yf(of.y.data<float>(), of.y.data<float>() + of.y.numel());
  EXPECT_LT(relative_l2(yf, to_vec(od.y)), 1e-5);
  // Backward too: in f32 the experts run one per thread (gemm nests in OpenMP), in f64 in turn.
  const auto dyd = random_vector<double>(32 * 16, 9);
  Tensor dyf = Tensor::empty(Shape{32, 16}, DType::kF32);
  for (size_t i = 0; i < dyd.size(); ++i) dyf.data<float>()[i] = static_cast<float>(dyd[i]);
  const MoEGradients& gd = ld.backward(tensor_of(dyd, Shape{32, 16}));
  const MoEGradients& gf = lf.backward(dyf);
  auto as_double = [](const Tensor& t) {
    return std::vector<double>(t.data<float>(), t.data<float>() + t.numel());
  };
  EXPECT_LT(relative_l2(as_double(gf.dx), to_vec(gd.dx)), 1e-5);
  EXPECT_LT(relative_l2(as_double(gf.weights.w1), to_vec(gd.weights.w1)), 1e-5);
  EXPECT_LT(relative_l2(as_double(gf.weights.w2), to_vec(gd.weights.w2)), 1e-5);
  EXPECT_LT(relative_l2(as_double(gf.weights.router), to_vec(gd.weights.router)), 1e-5);
}

}  // namespace
}  // namespace moex
