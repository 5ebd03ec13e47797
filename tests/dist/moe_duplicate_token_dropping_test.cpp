// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt). Duplicate Token Dropping
// (docs/parallelism.md) changes how expert rows travel, not which rows arrive: with tp 2 x ep 2
// (np 4) an MoE layer whose tp ranks each send half of every block through the all-to-all and
// all-gather the halves over tp gives bit for bit the outputs and gradients of the same layer
// with plain all-to-alls, and sends half the all-to-all bytes (capacity mode: exactly, from the
// capacity; dropless: fewer). At np 2 no layout has both tp and ep > 1: the layer's refusal of
// DTD without an expert group is checked instead.
#include <gtest/gtest.h>

#include <string>

#include "dist/parallel_layout.h"
#include "moe/moe_layer.h"
#include "moe_test_inputs.h"
#include "unit/cpu_kernel_checks.h"

namespace moex {
namespace {

using testing::random_tensor;

void expect_same_bits(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_EQ(a.defined(), b.defined()) << what;
  if (!a.defined()) return;
  ASSERT_EQ(a.numel(), b.numel()) << what;
  for (int64_t i = 0; i < a.numel(); ++i)
    ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << what << " at " << i;
}

// Half of a block of `rows`: tp rank 0 sends the first ceil(rows / 2) rows, rank 1 the rest.
int64_t half_share(int64_t rows, int tp_rank) {
  const int64_t first = (rows + 1) / 2;
  return tp_rank == 0 ? first : rows - first;
}

void check_layout_of_four(bool dropless) {
  dist::Communicator& world = dist::Communicator::world();
  const dist::ParallelLayout layout = dist::ParallelLayout::map(4, world.rank(), 2, 2);
  dist::ProcessGroups groups = dist::ProcessGroups::make(world, layout);
  MoEConfig c = testing::small_moe_config();
  c.jitter_eps = 0.05f;
  c.dropless = dropless;
  MoELayer plain(c, DType::kF32, groups.ep.get()), dtd(c, DType::kF32, groups.ep.get());
  plain.init_weights(3);
  dtd.init_weights(3);
  dtd.drop_duplicate_tokens(groups.tp.get());
  // The ranks of a tp group hold the same tokens (those of their dp rank).
  const int64_t tokens = 29, d = c.hidden_size;
  const Tensor x =
      random_tensor(Shape{tokens, d}, DType::kF32, 7, static_cast<uint64_t>(layout.dp_rank));
  const Tensor dy =
      random_tensor(Shape{tokens, d}, DType::kF32, 8, static_cast<uint64_t>(layout.dp_rank));
  MoEForwardOptions options;
  options.training = true;
  options.seed = 11;
  options.offset = static_cast<uint64_t>(layout.dp_rank);
  options.keep_for_backward = true;

  const MoEOutput& a = plain.forward(x, options);
  const MoEGradients& ga = plain.backward(dy);
  const MoEOutput& b = dtd.forward(x, options);
  const MoEGradients& gb = dtd.backward(dy);
  expect_same_bits(a.y, b.y, "y");
  EXPECT_EQ(a.aux_loss, b.aux_loss);
  EXPECT_EQ(a.counts, b.counts);
  expect_same_bits(ga.dx, gb.dx, "dx");
  expect_same_bits(ga.weights.router, gb.weights.router, "router gradient");
  expect_same_bits(ga.weights.w1, gb.weights.w1, "w1 gradient");
  expect_same_bits(ga.weights.w2, gb.weights.w2, "w2 gradient");

  const moe::ExchangeStats& p = plain.exchange_stats();
  const moe::ExchangeStats& q = dtd.exchange_stats();
  EXPECT_EQ(p.exchanges, 4);
  EXPECT_EQ(q.exchanges, 4);
  EXPECT_EQ(p.gather_bytes_sent, 0);
  EXPECT_GT(q.gather_bytes_sent, 0);
  if (dropless) {
    EXPECT_LT(q.bytes_sent, p.bytes_sent);
    EXPECT_GE(2 * q.bytes_sent + 4 * 4 * d * 4, p.bytes_sent);  // a half, up to a row per block
    return;
  }
  // Capacity mode, the same token count on every rank: every block is El x C rows, so each of
  // the 4 exchanges sends one block to the one other ep rank.
  const int64_t el = c.num_experts / 2, block = el * a.capacity, elem = 4;
  EXPECT_EQ(p.bytes_sent, 4 * block * d * elem);
  EXPECT_EQ(q.bytes_sent, 4 * half_share(block, layout.tp_rank) * d * elem);
  // The all-gather: each exchange shares this rank's halves of both ep ranks' blocks.
  EXPECT_EQ(q.gather_bytes_sent, 4 * 2 * ((block + 1) / 2) * d * elem);
}

TEST(DuplicateTokenDropping, SameBitsFewerAllToAllBytes) {
  dist::Communicator& world = dist::Communicator::world();
  if (world.size() == 4) {
    check_layout_of_four(false);
    check_layout_of_four(true);
    return;
  }
  ASSERT_EQ(world.size(), 2) << "run with mpirun -np 2 or 4";
  MoEConfig c;
  c.hidden_size = 6;
  c.ffn_size = 5;
  c.num_experts = 8;
  MoELayer alone(c);
  testing::expect_error_naming([&] { alone.drop_duplicate_tokens(&world); },
                               {"Duplicate Token Dropping", "needs an expert group"});
}

}  // namespace
}  // namespace moex
