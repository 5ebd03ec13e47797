// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt): training with activation
// checkpointing under expert parallelism, with Communication-aware Activation Checkpointing
// (parallel.cac, docs/parallelism.md §CAC) on and off. CAC must change no number — losses, aux
// losses, final weights and Adam moments the same values — and both must equal the
// single-process run within the tolerances of train_expert_parallel_test.cpp. CAC on must send
// exactly the bytes of the forward all-to-alls less: every rank counts the bytes its recomputes
// did not send, and a run with checkpointing sends the forward's bytes three times without CAC
// (first pass, recompute, backward, which moves what the forward moves) and twice with it.
#include <gtest/gtest.h>

#include <cstdio>

#include "train/trainer.h"
#include "train_compare.h"
#include "train_fixture.h"
#include "unit/cpu_kernel_checks.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

using testing::expect_near_rel;
using testing::expect_same_checkpoint;
using testing::Metrics;
using testing::read_metrics;

constexpr int64_t kSteps = 4;

void check_cac(int ep, bool dropless) {
  dist::Communicator& world = dist::Communicator::world();
  SCOPED_TRACE("ep " + std::to_string(ep) + (dropless ? ", dropless" : ", capacity"));
  const std::string name = "cac_test_np" + std::to_string(world.size()) + "_ep" +
                           std::to_string(ep) + (dropless ? "_dropless" : "_capacity");
  const fs::path corpus = fs::current_path() / name;
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  const std::string moe = dropless ? R"(, "dropless": true)" : "";
  // No evaluation: its forwards exchange too, and are no part of what CAC saves.
  const std::string training = R"(, "steps": 4, "eval_every": 0, "activation_checkpointing": true)";
  const std::string parallel = R"(, "parallel": {"ep": )" + std::to_string(ep);
  const std::string off_out = (corpus / "off").string(), on_out = (corpus / "on").string(),
                    ref_out = (corpus / "ref").string();
  const TrainConfig off_config = TrainConfig::from_file(
      testing::write_config(corpus, off_out, R"(, "grad_accum": 1)" + training, &world, moe,
                            parallel + "}")
          .string());
  const TrainConfig on_config = TrainConfig::from_file(
      testing::write_config(corpus, on_out, R"(, "grad_accum": 1)" + training, &world, moe,
                            parallel + R"(, "cac": true})")
          .string());
  ASSERT_TRUE(on_config.parallel.cac);
  const TrainResult off = run_training(off_config, "", 0, &world);
  const TrainResult on = run_training(on_config, "", 0, &world);

  // Every rank: one micro-batch per step, each MoE layer's recompute saves its two forward
  // all-to-alls.
  const int64_t passes = kSteps * on_config.model.num_moe_layers();
  EXPECT_EQ(off.exchange.exchanges, 6 * passes);
  EXPECT_EQ(off.exchange.exchanges_saved, 0);
  EXPECT_EQ(on.exchange.exchanges, 4 * passes);
  EXPECT_EQ(on.exchange.exchanges_saved, 2 * passes);
  EXPECT_GT(on.exchange.bytes_saved, 0);
  EXPECT_EQ(off.exchange.bytes_sent - on.exchange.bytes_sent, on.exchange.bytes_saved);
  EXPECT_EQ(off.exchange.bytes_sent, 3 * on.exchange.bytes_saved);
  EXPECT_EQ(on.exchange.bytes_sent, 2 * on.exchange.bytes_saved);
  int64_t totals[3] = {off.exchange.bytes_sent, on.exchange.bytes_sent, on.exchange.bytes_saved};
  world.all_reduce_sum(totals, 3);
  if (world.is_root())
    std::printf(
        "[cac] np %d, ep %d, %s, %lld steps: all ranks sent %lld bytes without CAC, "
        "%lld with CAC (%lld saved)\n",
        world.size(), ep, dropless ? "dropless" : "capacity", static_cast<long long>(kSteps),
        static_cast<long long>(totals[0]), static_cast<long long>(totals[1]),
        static_cast<long long>(totals[2]));

  if (world.is_root()) {
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out,
                              R"(, "grad_accum": )" + std::to_string(world.size()) + training,
                              nullptr, moe)
            .string());
    run_training(ref, "", 0, &dist::Communicator::local());

    const Metrics a = read_metrics(on_out + "/metrics.jsonl");
    const Metrics b = read_metrics(off_out + "/metrics.jsonl");
    const Metrics r = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(r.loss.size(), static_cast<size_t>(kSteps));
    expect_near_rel(a.loss, b.loss, "loss, CAC on and off", 0);
    expect_near_rel(a.aux, b.aux, "aux loss, CAC on and off", 0);
    EXPECT_EQ(a.dropped, b.dropped);
    expect_same_checkpoint(on_out + "/final", off_out + "/final", 0);
    expect_near_rel(a.loss, r.loss, "loss");
    expect_near_rel(a.aux, r.aux, "aux loss");
    expect_same_checkpoint(on_out + "/final", ref_out + "/final");
    if (dropless) {
      EXPECT_EQ(r.dropped, 0);
    } else {
      EXPECT_GT(r.dropped, 0) << "the capacity case drops no route: it tests no capacity";
    }
    fs::remove_all(corpus);
  }
  world.barrier();
}

// Every ep >= 2 (powers of two) that divides the world size: np 2 runs ep 2; np 4 runs
// ep 2 x edp 2 and ep 4.
void check_cac_every_ep(bool dropless) {
  const int world = dist::Communicator::world().size();
  ASSERT_GE(world, 2) << "run this test with mpirun -np 2 (or more)";
  for (int ep = 2; ep <= world; ep *= 2)
    if (world % ep == 0) check_cac(ep, dropless);
}

TEST(TrainCac, CapacityRoutingEqualsCacOffAndTheSingleProcessRun) {
  check_cac_every_ep(false);
}

TEST(TrainCac, DroplessRoutingEqualsCacOffAndTheSingleProcessRun) {
  check_cac_every_ep(true);
}

}  // namespace
}  // namespace moex::train
