// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt): the MoE layer with its experts spread
// over an expert-parallel group equals, on every rank's own tokens, a layer holding every expert
// (the single process). Each rank can make every rank's tokens (Philox by rank), so the reference
// runs locally: the full layer on each group member's tokens, in member order, gives the outputs,
// input gradients, losses and loads of this rank, and the sum of the expert weight gradients over
// the group that this rank's rows must equal. Variants cover top-1 and top-2, every drop policy,
// dropless, uneven capacities (different token counts per rank), noise, PR-MoE residual and
// shared experts, SwiGLU, top-3 with sigmoid scores and a selection bias, and f64.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "dist/communicator.h"
#include "moe/moe_layer.h"
#include "moe_test_inputs.h"

namespace moex {
namespace {

using testing::random_tensor;

using testing::value_at;

// Relative L2 distance of a[offset_a ...] and b[offset_b ...] over n elements.
double rel_l2(const Tensor& a, int64_t offset_a, const Tensor& b, int64_t offset_b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = value_at(a, offset_a + i), y = value_at(b, offset_b + i);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

using Variant = testing::MoEVariant;

std::vector<Variant> variants() {
  MoEConfig base = testing::small_moe_config();
  std::vector<Variant> out;
  out.push_back({"top2_position", base});
  MoEConfig c = base;
  c.dropless = true;
  out.push_back({"top2_dropless", c});
  c = base;
  c.top_k = 1;
  c.drop_policy = DropPolicy::kProbs;
  c.rsample = true;
  c.capacity_factor_train = 0.7f;
  out.push_back({"top1_probs_rsample", c});
  c = base;
  c.top_k = 1;
  c.drop_policy = DropPolicy::kRts;
  c.jitter_eps = 0.05f;
  out.push_back({"top1_rts_jitter_uneven", c, DType::kF32, true});
  c = base;
  c.gumbel_second_expert = true;
  c.renormalize = true;
  c.renormalize_after_drop = true;
  c.residual = true;
  c.shared_ffn_size = 4;
  c.shared_gate = true;
  c.activation = ExpertActivation::kSwiGLU;
  out.push_back({"top2_gumbel_residual_shared_swiglu", c});
  c = base;
  c.dropless = true;
  out.push_back({"top2_dropless_f64_uneven", c, DType::kF64, true});
  c = base;
  c.top_k = 3;
  c.score_func = ScoreFunc::kSigmoid;
  c.selection_bias = true;  // set to non-zero values below
  c.renormalize = true;
  out.push_back({"top3_sigmoid_selection_bias", c});
  return out;
}

// Compares the ep layer on `group` with the full layer, for one variant.
void check_variant(const Variant& v, dist::Communicator& group, int world_rank_of_member0) {
  SCOPED_TRACE(std::string(v.name) + ", ep " + std::to_string(group.size()));
  const MoEConfig& c = v.config;
  const int ep = group.size(), me = group.rank();
  const int64_t d = c.hidden_size, el = c.num_experts / ep;
  auto tokens_of = [&](int member) -> int64_t { return v.uneven_tokens ? 24 + 5 * member : 24; };
  // Member q's inputs and upstream gradient, and its router noise stream (as micro-batch q).
  auto x_of = [&](int q) {
    return random_tensor(Shape{tokens_of(q), d}, v.dtype, 7, 100 + world_rank_of_member0 + q);
  };
  auto dy_of = [&](int q) {
    return random_tensor(Shape{tokens_of(q), d}, v.dtype, 8, 100 + world_rank_of_member0 + q);
  };
  auto options_of = [&](int q) {
    MoEForwardOptions o;
    o.training = true;
    o.seed = 11;
    o.offset = static_cast<uint64_t>(q);
    o.loss_scale = 0.5;
    return o;
  };

  MoELayer layer(c, v.dtype, &group), full(c, v.dtype);
  layer.init_weights(3);
  full.init_weights(3);
  for (MoELayer* l : {&layer, &full}) {  // the replicated selection bias steers selection
    const Tensor& bias = l->weights().selection_bias;
    for (int64_t e = 0; bias.defined() && e < bias.numel(); ++e) {
      if (v.dtype == DType::kF64) {
        bias.data<double>()[e] = 0.1 * static_cast<double>(e % 3);
      } else {
        bias.data<float>()[e] = 0.1f * static_cast<float>(e % 3);
      }
    }
  }
  ASSERT_EQ(layer.num_local_experts(), el);
  ASSERT_EQ(layer.first_local_expert(), me * el);

  const Tensor x = x_of(me), dy = dy_of(me);
  const MoEOutput& out = layer.forward(x, options_of(me));
  const MoEGradients& g = layer.backward(dy);

  // The reference: every member's micro-batch through the full layer, expert gradients summed.
  Tensor ref_w1_grad = Tensor::zeros(full.weights().w1.shape(), v.dtype);
  Tensor ref_w2_grad = Tensor::zeros(full.weights().w2.shape(), v.dtype);
  std::vector<std::vector<int64_t>> counts_of(ep);  // [member][E] kept routes per expert
  std::vector<int64_t> capacity_of(ep);
  for (int q = 0; q < ep; ++q) {
    const MoEOutput& ref = full.forward(x_of(q), options_of(q));
    counts_of[q].assign(ref.counts.begin(), ref.counts.end());
    capacity_of[q] = ref.capacity;
    if (q == me) {
      EXPECT_LT(rel_l2(out.y, 0, ref.y, 0, ref.y.numel()), 1e-6) << "y";
      EXPECT_NEAR(out.aux_loss, ref.aux_loss, 1e-6 * std::fabs(ref.aux_loss));
      EXPECT_NEAR(out.z_loss, ref.z_loss, 1e-6 * std::fabs(ref.z_loss));
      EXPECT_EQ(out.load, ref.load);
      EXPECT_EQ(out.counts, ref.counts);
      EXPECT_EQ(out.num_dropped, ref.num_dropped);
      EXPECT_EQ(out.capacity, ref.capacity);
    }
    const MoEGradients& rg = full.backward(dy_of(q));
    if (q == me) {
      EXPECT_LT(rel_l2(g.dx, 0, rg.dx, 0, rg.dx.numel()), 1e-6) << "dx";
      const MoEWeights& a = g.weights;
      const MoEWeights& b = rg.weights;
      for (auto [name, ta, tb] : {std::tuple{"router", &a.router, &b.router},
                                  {"residual_w1", &a.residual_w1, &b.residual_w1},
                                  {"residual_coef", &a.residual_coef, &b.residual_coef},
                                  {"shared_w2", &a.shared_w2, &b.shared_w2},
                                  {"shared_gate", &a.shared_gate, &b.shared_gate}}) {
        ASSERT_EQ(ta->defined(), tb->defined()) << name;
        if (tb->defined()) {
          EXPECT_LT(rel_l2(*ta, 0, *tb, 0, tb->numel()), 1e-6) << name;
        }
      }
    }
    for (int64_t i = 0; i < ref_w1_grad.numel(); ++i) {
      if (v.dtype == DType::kF64) {
        ref_w1_grad.data<double>()[i] += rg.weights.w1.data<double>()[i];
      } else {
        ref_w1_grad.data<float>()[i] += rg.weights.w1.data<float>()[i];
      }
    }
    for (int64_t i = 0; i < ref_w2_grad.numel(); ++i) {
      if (v.dtype == DType::kF64) {
        ref_w2_grad.data<double>()[i] += rg.weights.w2.data<double>()[i];
      } else {
        ref_w2_grad.data<float>()[i] += rg.weights.w2.data<float>()[i];
      }
    }
  }
  // This rank's experts: rows [me * El, (me + 1) * El) of the summed full gradients.
  const int64_t per1 = ref_w1_grad.numel() / c.num_experts,
                per2 = ref_w2_grad.numel() / c.num_experts;
  ASSERT_EQ(g.weights.w1.numel(), el * per1);
  ASSERT_EQ(g.weights.w2.numel(), el * per2);
  EXPECT_LT(rel_l2(g.weights.w1, 0, ref_w1_grad, me * el * per1, el * per1), 1e-6) << "dw1";
  EXPECT_LT(rel_l2(g.weights.w2, 0, ref_w2_grad, me * el * per2, el * per2), 1e-6) << "dw2";
  // The exchanges' bytes: forward and backward each send this rank's rows for every other member's
  // experts (capacity mode: El padded blocks of this rank's C) and return the rows the others sent
  // for this rank's experts.
  auto rows_sent = [&](int from, int owner) {
    if (!c.dropless) return el * capacity_of[from];
    int64_t n = 0;
    for (int64_t e = owner * el; e < (owner + 1) * el; ++e) n += counts_of[from][e];
    return n;
  };
  int64_t rows = 0;
  for (int p = 0; p < ep; ++p)
    if (p != me) rows += rows_sent(me, p) + rows_sent(p, me);
  const int64_t elem = v.dtype == DType::kF64 ? 8 : 4;
  EXPECT_EQ(layer.exchange_stats().exchanges, 4);
  EXPECT_EQ(layer.exchange_stats().bytes_sent, 2 * rows * d * elem);
  EXPECT_EQ(full.exchange_stats().bytes_sent, 0);
  // The shard's weights are those rows of the full layer's.
  EXPECT_EQ(rel_l2(layer.weights().w1, 0, full.weights().w1, me * el * per1, el * per1), 0.0);
}

// For every ep >= 2 dividing the world: groups of ep consecutive ranks, as the layout makes them.
TEST(MoEExpertParallel, EqualsTheFullLayerOnEveryRanksTokens) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  for (int ep = 2; ep <= world.size(); ep *= 2) {
    if (world.size() % ep != 0) continue;
    auto group = world.split(world.rank() / ep, world.rank() % ep);
    ASSERT_EQ(group->size(), ep);
    for (const Variant& v : variants()) check_variant(v, *group, world.rank() / ep * ep);
  }
}

}  // namespace
}  // namespace moex
