// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt): expert-parallel training must equal
// the single-process run on the same global batch. With W ranks, ep experts groups and
// grad_accum 1, every step covers W micro-batches (dp = W, edp = W / ep); the reference is one
// process holding every expert with grad_accum W (same micro-batches, same router RNG streams),
// so losses, aux losses, the gathered final weights and the Adam moments agree up to the rounding
// of the gradient sums' order. Capacity (padded, fixed-size all-to-all) and dropless (counts
// first, then all-to-all-v) routing are both checked, for every ep >= 2 that divides W.
#include <gtest/gtest.h>

#include <cmath>

#include "train/trainer.h"
#include "train_compare.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

using testing::expect_near_rel;
using testing::expect_same_checkpoint;
using testing::Metrics;
using testing::read_metrics;

// Trains with parallel.ep = ep on every rank and, on the root, the single-process reference;
// compares them on the root.
// `extra_training` is added to both runs' "training" object.
void check_equals_single_process(int ep, bool dropless, const std::string& extra_training = "") {
  dist::Communicator& world = dist::Communicator::world();
  const std::string name = "ep_test_np" + std::to_string(world.size()) + "_ep" +
                           std::to_string(ep) + (dropless ? "_dropless" : "_capacity") +
                           (extra_training.empty() ? "" : "_extra");
  const fs::path corpus = fs::current_path() / name;
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  const std::string moe = dropless ? R"(, "dropless": true)" : "";
  const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 2)" + extra_training;
  const std::string ep_out = (corpus / "ep").string(), ref_out = (corpus / "ref").string();
  const TrainConfig ep_config = TrainConfig::from_file(
      testing::write_config(corpus, ep_out, training, &world, moe,
                            R"(, "parallel": {"ep": )" + std::to_string(ep) + "}")
          .string());
  run_training(ep_config, "", 0, &world);

  if (world.is_root()) {
    const std::string ref_training = R"(, "grad_accum": )" + std::to_string(world.size()) +
                                     R"(, "steps": 4, "eval_every": 2)" + extra_training;
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out, ref_training, nullptr, moe).string());
    run_training(ref, "", 0, &dist::Communicator::local());

    const Metrics a = read_metrics(ep_out + "/metrics.jsonl");
    const Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 4u);
    ASSERT_EQ(b.eval.size(), 2u);
    expect_near_rel(a.loss, b.loss, "loss");
    expect_near_rel(a.aux, b.aux, "aux loss");
    expect_near_rel(a.eval, b.eval, "eval loss");
    // The capacity case must exercise dropping; dropless must drop nothing.
    if (dropless) {
      EXPECT_EQ(b.dropped, 0);
    } else {
      EXPECT_GT(b.dropped, 0) << "the capacity case drops no route: it tests no capacity";
    }

    // The ep checkpoint holds every expert under its global name: it loads single-process.
    expect_same_checkpoint(ep_out + "/final", ref_out + "/final");
    fs::remove_all(corpus);
  }
  world.barrier();
}

// Activation checkpointing recomputes each block in backward: the exchange runs again, with the
// routing of the first pass held fixed.
TEST(ExpertParallel, ActivationCheckpointingEqualsTheSingleProcessRun) {
  const int world = dist::Communicator::world().size();
  ASSERT_GE(world, 2) << "run this test with mpirun -np 2 (or more)";
  check_equals_single_process(world, false, R"(, "activation_checkpointing": true)");
}

// Every ep >= 2 (powers of two) that divides the world size.
void check_every_ep(bool dropless) {
  const int world = dist::Communicator::world().size();
  ASSERT_GE(world, 2) << "run this test with mpirun -np 2 (or more)";
  for (int ep = 2; ep <= world; ep *= 2) {
    SCOPED_TRACE("ep " + std::to_string(ep));
    if (world % ep == 0) check_equals_single_process(ep, dropless);
  }
}

TEST(ExpertParallel, CapacityRoutingEqualsTheSingleProcessRun) {
  check_every_ep(false);
}

TEST(ExpertParallel, DroplessRoutingEqualsTheSingleProcessRun) {
  check_every_ep(true);
}

// A checkpoint written under ep = 2 loads into the single process and into the largest ep the
// world allows, and training continued from it is the same in both.
TEST(ExpertParallel, CheckpointMovesBetweenLayouts) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const int resume_ep = world.size() >= 4 ? 4 : 2;
  const fs::path corpus = fs::current_path() / ("ep_resume_np" + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 0)";
  auto parallel = [](int ep) { return R"(, "parallel": {"ep": )" + std::to_string(ep) + "}"; };
  const std::string first_out = (corpus / "first").string(), ep_out = (corpus / "ep").string(),
                    ref_out = (corpus / "ref").string();
  const TrainConfig first = TrainConfig::from_file(
      testing::write_config(corpus, first_out, training, &world, "", parallel(2)).string());
  run_training(first, "", 2, &world);  // two steps, then a "latest" checkpoint
  const std::string saved = first_out + "/latest";

  const TrainConfig ep = TrainConfig::from_file(
      testing::write_config(corpus, ep_out, training, &world, "", parallel(resume_ep)).string());
  run_training(ep, saved, 0, &world);

  if (world.is_root()) {
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out,
                              R"(, "grad_accum": )" + std::to_string(world.size()) +
                                  R"(, "steps": 4, "eval_every": 0)")
            .string());
    run_training(ref, saved, 0, &dist::Communicator::local());
    const Metrics a = read_metrics(ep_out + "/metrics.jsonl");
    const Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 2u);  // steps 3 and 4
    expect_near_rel(a.loss, b.loss, "loss after resuming");
    expect_same_checkpoint(ep_out + "/final", ref_out + "/final");
    fs::remove_all(corpus);
  }
  world.barrier();
}

}  // namespace
}  // namespace moex::train
