// Data-, expert- and tensor-parallel training and ZeRO on GPU ranks. scripts/gpu_check.sh runs it
// on ONE GPU: mpirun -np 2 with MOEX_GPU_COLLECTIVES=host (NCCL refuses two ranks on one GPU, so
// the GPU collectives go through MPI in host memory; everything else is the code a multi-GPU run
// uses: the trainer's dp, ep and edp groups, the GPU MoE layer's exchange, the expert gradients
// summed over edp). With a GPU per rank it runs over NCCL as it is. As on CPU ranks
// (tests/dist/train_expert_parallel_test.cpp) the run must equal the single process holding every
// expert with grad_accum W, here within bf16 rounding: the expert GEMMs see other row counts on
// the owners than in the single process, so the tolerance is 2e-2 relative (a wrong exchange or
// gradient sum is off by far more). Not registered with ctest: CI has no GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ops/device.h"
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

constexpr double kTolerance = 2e-2;

// The layout on all ranks: tp and ep (1, 1: data parallelism alone, the gradients summed over dp
// through the GPU group); zero_stage 1 or 2: the Adam moments sharded over dp (non-expert) and
// edp (experts), with a 10,000-element tile so that every shard takes several tiles; stage 2
// reduce-scatters the gradients. The reference runs the dp = W / tp micro-batches of a step as
// gradient accumulation.
struct Layout {
  int tp = 1, ep = 1;
  bool dropless = false;
  int zero_stage = 0;
  bool cac = false;  // activation checkpointing with CAC (the reference checkpoints too)
};

void check_equals_single_process(const Layout& l) {
  const int ep = l.ep, zero_stage = l.zero_stage;
  const bool dropless = l.dropless;
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const char* collectives = std::getenv("MOEX_GPU_COLLECTIVES");
  const bool host = collectives != nullptr && std::strcmp(collectives, "host") == 0;
  ASSERT_TRUE(host || ops::device_count() >= world.size())
      << "ranks sharing a GPU need MOEX_GPU_COLLECTIVES=host (NCCL takes one rank per GPU)";
  const std::string name = "gpu_tp" + std::to_string(l.tp) + "_ep" + std::to_string(ep) + "_zero" +
                           std::to_string(zero_stage) + (l.cac ? "_cac_" : "_") +
                           (dropless ? "dropless" : "capacity");
  const std::string checkpointing = l.cac ? R"(, "activation_checkpointing": true)" : "";
  const fs::path corpus = fs::current_path() / name;
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  // The fixture's model with GPU-friendly sizes (head_dim 32, widths multiples of 8).
  const std::string model =
      R"(, "vocab_size": 64, "hidden_size": 128, "num_heads": 4, "ffn_size": 256)";
  const std::string moe =
      std::string(R"(, "ffn_size": 64)") + (dropless ? R"(, "dropless": true)" : "");
  const std::string training =
      R"(, "device": "cuda", "grad_accum": 1, "steps": 4, "eval_every": 2)" + checkpointing;
  const std::string ep_out = (corpus / "ep").string(), ref_out = (corpus / "ref").string();
  const TrainConfig ep_config = TrainConfig::from_file(
      testing::write_config(
          corpus, ep_out, training, &world, moe,
          R"(, "parallel": {"tp": )" + std::to_string(l.tp) + R"(, "ep": )" + std::to_string(ep) +
              R"(, "zero_stage": )" + std::to_string(zero_stage) +
              R"(, "tile_elements": 10000, "cac": )" + (l.cac ? "true" : "false") + "}",
          model)
          .string());
  run_training(ep_config, "", 0, &world);

  if (world.is_root()) {
    const std::string ref_training = R"(, "device": "cuda", "grad_accum": )" +
                                     std::to_string(world.size() / l.tp) +
                                     R"(, "steps": 4, "eval_every": 2)" + checkpointing;
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out, ref_training, nullptr, moe, "", model).string());
    run_training(ref, "", 0, &dist::Communicator::local());

    const Metrics a = read_metrics(ep_out + "/metrics.jsonl");
    const Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 4u);
    ASSERT_EQ(b.eval.size(), 2u);
    for (size_t i = 0; i < a.loss.size() && i < b.loss.size(); ++i)
      std::printf("[ info ] %s step %zu: loss %.6f with ep %d, %.6f in one process\n", name.c_str(),
                  i + 1, a.loss[i], ep, b.loss[i]);
    expect_near_rel(a.loss, b.loss, "loss", kTolerance);
    expect_near_rel(a.aux, b.aux, "aux loss", kTolerance);
    expect_near_rel(a.eval, b.eval, "eval loss", kTolerance);
    if (dropless) {
      EXPECT_EQ(b.dropped, 0);
    } else {
      EXPECT_GT(b.dropped, 0) << "the capacity case drops no route: it tests no capacity";
    }
    // Every expert under its global name, weights and moments.
    expect_same_checkpoint(ep_out + "/final", ref_out + "/final", kTolerance);
    fs::remove_all(corpus);
  }
  world.barrier();
}

TEST(GpuDataParallel, EqualsTheSingleProcessRun) {
  check_equals_single_process({});
}

TEST(GpuZero, StagesOneAndTwoEqualTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  check_equals_single_process({1, 1, false, 1});
  check_equals_single_process({1, 1, false, 2});
  // Experts sharded by ep, the rest of the state by ZeRO over dp.
  check_equals_single_process({1, w, true, 2});
}

// ep = every rank: each holds 1/W of the experts.
TEST(GpuExpertParallel, CapacityRoutingEqualsTheSingleProcessRun) {
  check_equals_single_process({1, dist::Communicator::world().size(), false});
}

// Communication-aware activation checkpointing: the recompute reuses the first pass's exchange.
TEST(GpuExpertParallel, CacEqualsTheSingleProcessRun) {
  check_equals_single_process({1, dist::Communicator::world().size(), false, 0, true});
}

TEST(GpuExpertParallel, DroplessRoutingEqualsTheSingleProcessRun) {
  check_equals_single_process({1, dist::Communicator::world().size(), true});
}

// Megatron splits of attention, the dense MLP, the embedding and the LM head (vocabulary-parallel
// cross-entropy) over tp = every rank. Last in the file: on the H200 its losses agreed (step 1 to
// 2e-5 relative) but its final weights (4.6 % relative L2) and Adam moments (3-7 %) did not meet
// the 2e-2 tolerance, and a failure ends the job (docs/parallelism.md §Tests says what is open).
TEST(GpuTensorParallel, EqualsTheSingleProcessRun) {
  check_equals_single_process({dist::Communicator::world().size()});
}

}  // namespace
}  // namespace moex::train
