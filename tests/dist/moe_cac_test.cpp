// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt): Communication-aware Activation
// Checkpointing in the MoE layer (docs/parallelism.md §CAC). An activation-checkpointed layer
// runs a first pass that keeps nothing for backward, a recompute with the first pass's routing,
// then backward. With CAC the recompute takes the first pass's all-to-all results instead of
// exchanging again; it must give the same bits as the recompute that exchanges, and the bytes it
// does not send must be those of the forward's two all-to-alls, worked out here from every
// member's per-expert counts and capacity.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/rng.h"
#include "dist/communicator.h"
#include "moe/moe_layer.h"
#include "moe_test_inputs.h"
#include "unit/cpu_kernel_checks.h"

namespace moex {
namespace {

using testing::random_tensor;

// Appends t's values as doubles (exact for f32 and f64): equal vectors mean the same values.
void append(const Tensor& t, std::vector<double>& out) {
  if (!t.defined()) return;
  for (int64_t i = 0; i < t.numel(); ++i) out.push_back(testing::value_at(t, i));
}

using Variant = testing::MoEVariant;

std::vector<Variant> cac_variants() {
  MoEConfig base = testing::small_moe_config();
  base.jitter_eps = 0.05f;
  std::vector<Variant> out;
  out.push_back({"top2_capacity", base});
  out.push_back({"top2_capacity_uneven", base, DType::kF32, true});
  MoEConfig c = base;
  c.dropless = true;
  out.push_back({"top2_dropless_uneven", c, DType::kF32, true});
  out.push_back({"top2_dropless_f64", c, DType::kF64});
  c = base;
  c.residual = true;
  c.shared_ffn_size = 4;
  c.shared_gate = true;
  c.activation = ExpertActivation::kSwiGLU;
  out.push_back({"top2_residual_shared_swiglu", c});
  return out;
}

// What one checkpointed micro-batch gives: the recompute's output, every gradient, and the
// exchange statistics it added.
struct Pass {
  std::vector<double> values;  // y, dx, then every defined weight gradient
  moe::ExchangeStats stats;
  std::vector<int64_t> counts;  // [E] kept routes per expert
  int64_t capacity = 0;
};

Pass checkpointed_pass(MoELayer& layer, bool cac, const Tensor& x, const Tensor& dy,
                       MoEForwardOptions options) {
  const moe::ExchangeStats before = layer.exchange_stats();
  MoEForwardOptions first = options;
  first.keep_for_backward = false;
  first.keep_exchange = cac;
  layer.forward(x, first);
  const MoERouting held = layer.routing();  // what FfnLayer::hold_routing passes back
  MoEForwardOptions again = options;
  again.fixed_routing = &held;
  again.reuse_exchange = cac;
  const MoEOutput& out = layer.forward(x, again);
  Pass p;
  append(out.y, p.values);
  p.counts = out.counts;
  p.capacity = out.capacity;
  const MoEGradients& g = layer.backward(dy);
  append(g.dx, p.values);
  const MoEWeights& w = g.weights;
  for (const Tensor* t : {&w.router, &w.w1, &w.w2, &w.residual_w1, &w.residual_w2, &w.residual_coef,
                          &w.shared_w1, &w.shared_w2, &w.shared_gate})
    append(*t, p.values);
  const moe::ExchangeStats after = layer.exchange_stats();
  p.stats.exchanges = after.exchanges - before.exchanges;
  p.stats.bytes_sent = after.bytes_sent - before.bytes_sent;
  p.stats.exchanges_saved = after.exchanges_saved - before.exchanges_saved;
  p.stats.bytes_saved = after.bytes_saved - before.bytes_saved;
  return p;
}

void check_cac_variant(const Variant& v, dist::Communicator& group, int world_rank) {
  SCOPED_TRACE(std::string(v.name) + ", ep " + std::to_string(group.size()));
  const MoEConfig& c = v.config;
  const int ep = group.size(), me = group.rank();
  const int64_t d = c.hidden_size, num_e = c.num_experts, el = num_e / ep;
  const int64_t tokens = v.uneven_tokens ? 24 + 5 * me : 24;
  MoELayer off(c, v.dtype, &group), on(c, v.dtype, &group);
  off.init_weights(3);
  on.init_weights(3);
  // Two micro-batches in a row: the second must not see the first one's kept exchange.
  for (uint64_t micro = 0; micro < 2; ++micro) {
    SCOPED_TRACE("micro-batch " + std::to_string(micro));
    const uint64_t stream = 100 + 10 * micro + static_cast<uint64_t>(world_rank);
    const Tensor x = random_tensor(Shape{tokens, d}, v.dtype, 7, stream);
    const Tensor dy = random_tensor(Shape{tokens, d}, v.dtype, 8, stream);
    MoEForwardOptions options;
    options.training = true;
    options.seed = 11;
    options.offset = micro * 4 + static_cast<uint64_t>(me);
    options.loss_scale = 0.5;
    const Pass a = checkpointed_pass(off, false, x, dy, options);
    const Pass b = checkpointed_pass(on, true, x, dy, options);
    ASSERT_EQ(a.values.size(), b.values.size());
    EXPECT_TRUE(a.values == b.values) << "CAC changed the recompute's output or a gradient";

    // Without CAC: two forward exchanges in the first pass, two again in the recompute, two in
    // backward. With CAC the recompute's two are saved.
    EXPECT_EQ(a.stats.exchanges, 6);
    EXPECT_EQ(a.stats.exchanges_saved, 0);
    EXPECT_EQ(b.stats.exchanges, 4);
    EXPECT_EQ(b.stats.exchanges_saved, 2);
    // The forward's two all-to-alls: this rank's rows to every other member's experts, and the
    // rows the others sent to this rank's experts back (capacity mode: El blocks of the sender's
    // capacity).
    std::vector<int64_t> mine(a.counts.begin(), a.counts.end());
    mine.push_back(a.capacity);
    std::vector<int64_t> all(static_cast<size_t>((num_e + 1) * ep));
    group.all_gather(mine.data(), all.data(), num_e + 1);
    auto rows_sent = [&](int from, int owner) {
      const int64_t* counts = all.data() + from * (num_e + 1);
      if (!c.dropless) return el * counts[num_e];
      int64_t n = 0;
      for (int64_t e = owner * el; e < (owner + 1) * el; ++e) n += counts[e];
      return n;
    };
    int64_t rows = 0;
    for (int p = 0; p < ep; ++p)
      if (p != me) rows += rows_sent(me, p) + rows_sent(p, me);
    const int64_t elem = v.dtype == DType::kF64 ? 8 : 4;
    EXPECT_GT(rows, 0);
    EXPECT_EQ(b.stats.bytes_saved, rows * d * elem);
    EXPECT_EQ(a.stats.bytes_sent - b.stats.bytes_sent, b.stats.bytes_saved);
    EXPECT_EQ(a.stats.bytes_sent, 3 * rows * d * elem);  // backward moves what forward moves
  }
}

TEST(MoECac, RecomputeReusesTheExchangeBitForBit) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  for (int ep = 2; ep <= world.size(); ep *= 2) {
    if (world.size() % ep != 0) continue;
    auto group = world.split(world.rank() / ep, world.rank() % ep);
    for (const Variant& v : cac_variants()) check_cac_variant(v, *group, world.rank());
  }
}

// A recompute can reuse only a kept first pass of the same routing; anything else is refused
// before any collective, on every rank alike.
TEST(MoECac, ReuseWithoutAKeptFirstPassIsRefused) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const Variant v = cac_variants().front();
  MoELayer layer(v.config, v.dtype, &world);
  layer.init_weights(3);
  const Tensor x = random_tensor(Shape{24, v.config.hidden_size}, v.dtype, 7, world.rank());
  MoEForwardOptions options;
  options.training = true;
  options.reuse_exchange = true;
  const MoERouting none;
  options.fixed_routing = &none;
  testing::expect_error_naming([&] { layer.forward(x, options); },
                               {"reuse_exchange", "keep_exchange"});
  // A first pass without keep_exchange keeps nothing either.
  MoEForwardOptions first;
  first.training = true;
  first.keep_for_backward = false;
  layer.forward(x, first);
  const MoERouting held = layer.routing();
  options.fixed_routing = &held;
  testing::expect_error_naming([&] { layer.forward(x, options); },
                               {"reuse_exchange", "keep_exchange"});
}

}  // namespace
}  // namespace moex
