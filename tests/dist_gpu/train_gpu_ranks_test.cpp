// Data-, expert- and tensor-parallel training and ZeRO on GPU ranks. scripts/gpu_check.sh runs it
// on ONE GPU: mpirun -np 2 with MOEX_GPU_COLLECTIVES=host (NCCL refuses two ranks on one GPU, so
// the GPU collectives go through MPI in host memory; everything else is the code a multi-GPU run
// uses: the trainer's dp, ep and edp groups, the GPU MoE layer's exchange, the expert gradients
// summed over edp). With a GPU per rank it runs over NCCL as it is. As on CPU ranks
// (tests/dist/train_expert_parallel_test.cpp) the run must equal the single process holding every
// expert with grad_accum W, here within bf16 rounding: the expert GEMMs see other row counts on
// the owners than in the single process, so the tolerance is 2e-2 relative (a wrong exchange or
// gradient sum is off by far more). Two choices keep bf16 rounding from being amplified into
// differences larger than that:
//   - AdamW's eps is 1e-2 rather than 1e-8. With a tiny eps the first steps move every weight by
//     about lr * sign(gradient), so an element whose gradient is within rounding of zero moves by
//     +lr in one run and -lr in the other; with eps above the gradients' size the update is
//     proportional to the gradient and rounding stays rounding.
//   - Under tensor parallelism the attention and MLP outputs are sums of per-rank parts, rounded
//     differently from the single process, so a token near a routing tie (top-k or the capacity
//     boundary) may go to another expert, which changes that expert's gradient by far more than
//     rounding. The tp layouts route every token to every expert (top_k = E, dropless): no ties.
// Not registered with ctest: CI has no GPU.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "dist/device_group.h"
#include "dist/nccl_communicator.h"
#include "infer/scheduler.h"
#include "model/model_io.h"
#include "ops/device.h"
#include "train/distill.h"
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
  bool cac = false;             // activation checkpointing with CAC (the reference checkpoints too)
  bool checkpointing = false;   // activation checkpointing (implied by cac)
  bool dtd = false;             // Duplicate Token Dropping (tp > 1 and ep > 1)
  bool expert_slicing = false;  // each expert's hidden width split over tp
  int steps = 4;                // 1: the Adam moments compare the first step's gradients
  bool all_experts = false;     // top_k = E, dropless: no routing ties (see the file comment)
  // 0 with cac: evaluation's forwards exchange too, and are no part of what CAC saves.
  int eval_every = 2;
  bool distill = false;  // both runs are moex distill from one random teacher of the same shape
  // ZeRO-Offload over the ranks (with zero_stage > 0): each rank's shard of the fp32 master
  // weights and moments stepped on the host; the reference steps on the GPU.
  bool offload = false;
  bool bf16_moments = false;  // optimizer.moments_dtype "bf16" in both runs
  // optimizer.master_dtype and grads_dtype "bf16" in both runs
  bool bf16_master = false, bf16_grads = false;
  bool shard_master = false;  // parallel.shard_master: ZeRO's fp32 master sharded, bf16 weights
  bool overlap_comm = false;  // parallel.overlap_comm: the sums start as each block's backward ends
  // > 0: the distributed run stops after this many steps (its `latest` checkpoint) and a second
  // run resumes from that checkpoint to the end; the reference runs through.
  int resume_at = 0;
  double moment_tolerance = kTolerance;
};

// Prints each tensor's relative L2 difference (weights, then Adam moments), so that a failing
// comparison shows whether one tensor is wrong or every tensor carries the same rounding noise.
void report_checkpoint_differences(const std::string& a_dir, const std::string& b_dir) {
  for (const char* file : {io::kSafetensorsSingleName, "optimizer.safetensors"}) {
    const io::SafetensorsFile fa = io::SafetensorsFile::open(a_dir + "/" + file);
    const io::SafetensorsFile fb = io::SafetensorsFile::open(b_dir + "/" + file);
    for (const std::string& t : fb.names()) {
      const Tensor x = fa.weight_f32(t), y = fb.weight_f32(t);
      if (x.numel() != y.numel()) continue;  // expect_same_checkpoint names the mismatch
      std::printf("[ info ] %-48s rel L2 %.2e\n", t.c_str(),
                  testing::rel_l2(x.data<float>(), y.data<float>(), x.numel()));
    }
  }
}

// *result (when given): this rank's result of the distributed run.
void check_equals_single_process(const Layout& l, TrainResult* result = nullptr) {
  const int ep = l.ep, zero_stage = l.zero_stage;
  const bool dropless = l.dropless;
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const char* collectives = std::getenv("MOEX_GPU_COLLECTIVES");
  const bool host = collectives != nullptr && std::strcmp(collectives, "host") == 0;
  ASSERT_TRUE(host || ops::device_count() >= world.size())
      << "ranks sharing a GPU need MOEX_GPU_COLLECTIVES=host (NCCL takes one rank per GPU)";
  const std::string name = "gpu_tp" + std::to_string(l.tp) + "_ep" + std::to_string(ep) + "_zero" +
                           std::to_string(zero_stage) + (l.dtd ? "_dtd" : "") +
                           (l.expert_slicing ? "_sliced" : "") +
                           (l.cac             ? "_cac_"
                            : l.checkpointing ? "_ckpt_"
                                              : "_") +
                           (l.all_experts ? "all_experts"
                            : dropless    ? "dropless"
                                          : "capacity") +
                           "_steps" + std::to_string(l.steps) + (l.distill ? "_distill" : "") +
                           (l.offload ? "_offload" : "") + (l.bf16_moments ? "_bf16m" : "") +
                           (l.bf16_master ? "_bf16w" : "") + (l.bf16_grads ? "_bf16g" : "") +
                           (l.shard_master ? "_shardw" : "") + (l.overlap_comm ? "_overlap" : "") +
                           (l.resume_at > 0 ? "_resumed" + std::to_string(l.resume_at) : "");
  const std::string checkpointing =
      l.cac || l.checkpointing ? R"(, "activation_checkpointing": true)" : "";
  const fs::path corpus = fs::current_path() / name;
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();

  // The fixture's model with GPU-friendly sizes (head_dim 32, widths multiples of 8).
  const std::string model =
      R"(, "vocab_size": 64, "hidden_size": 128, "num_heads": 4, "ffn_size": 256)";
  const std::string moe = std::string(R"(, "ffn_size": 64)") +
                          (dropless || l.all_experts ? R"(, "dropless": true)" : "") +
                          (l.all_experts ? R"(, "top_k": 4)" : "");  // the fixture's 4 experts
  const std::string optimizer =
      std::string(R"(, "optimizer": {"lr": 0.01, "grad_clip": 1.0, "eps": 0.01)") +
      (l.bf16_moments ? R"(, "moments_dtype": "bf16")" : "") +
      (l.bf16_master ? R"(, "master_dtype": "bf16")" : "") +
      (l.bf16_grads ? R"(, "grads_dtype": "bf16")" : "") + "}";
  const std::string training = R"(, "device": "cuda", "grad_accum": 1, "steps": )" +
                               std::to_string(l.steps) + R"(, "eval_every": )" +
                               std::to_string(l.eval_every) + checkpointing;
  const std::string ep_out = (corpus / "ep").string(), ref_out = (corpus / "ref").string();
  const std::string distill = l.distill ? R"(, "distill": {"alpha": 0.5, "temperature": 2.0})" : "";
  const fs::path ep_path = testing::write_config(
      corpus, ep_out, training, &world, moe,
      R"(, "parallel": {"tp": )" + std::to_string(l.tp) + R"(, "ep": )" + std::to_string(ep) +
          R"(, "zero_stage": )" + std::to_string(zero_stage) +
          R"(, "tile_elements": 10000, "cac": )" + (l.cac ? "true" : "false") + R"(, "dtd": )" +
          (l.dtd ? "true" : "false") + R"(, "expert_slicing": )" +
          (l.expert_slicing ? "true" : "false") + R"(, "offload": )" +
          (l.offload ? "true" : "false") + R"(, "shard_master": )" +
          (l.shard_master ? "true" : "false") + R"(, "overlap_comm": )" +
          (l.overlap_comm ? "true" : "false") + "}" + optimizer + distill,
      model);
  const TrainConfig ep_config = l.distill ? DistillRunConfig::from_file(ep_path.string()).train
                                          : TrainConfig::from_file(ep_path.string());
  // The teacher: the student's shape with other random weights, written once.
  const std::string teacher = (corpus / "teacher").string();
  if (l.distill && world.is_root()) {
    model::Model t(ep_config.model);
    t.init_weights(77);
    fs::create_directories(teacher);
    model::save_model(t, nlohmann::json::parse(std::ifstream(ep_path)).at("model").dump(2),
                      teacher);
  }
  world.barrier();
  auto run_config = [&](const fs::path& path, dist::Communicator* group,
                        const std::string& resume_dir = "", int64_t stop_after = 0) {
    if (!l.distill)
      return run_training(TrainConfig::from_file(path.string()), resume_dir, stop_after, group);
    return run_distillation(DistillRunConfig::from_file(path.string()), teacher, resume_dir,
                            stop_after, group);
  };
  if (l.resume_at > 0) {
    ASSERT_LT(l.resume_at, l.steps);
    const TrainResult first = run_config(ep_path, &world, "", l.resume_at);
    ASSERT_EQ(first.steps_done, l.resume_at);
  }
  const TrainResult run =
      run_config(ep_path, &world, l.resume_at > 0 ? ep_out + "/latest" : "", 0);
  if (result != nullptr) *result = run;
  if (l.shard_master && l.tp == 1) {
    // The fp32 master sharded with the moments: each rank's optimizer state is its 1/dp share of
    // both moments and of the master (docs/parallelism.md §ZeRO), up to the shards' padding.
    const model::Model whole(ep_config.model);
    const double share = static_cast<double>(whole.params().num_elements()) / world.size();
    const double bytes_per_element = 2.0 * (l.bf16_moments ? 2 : 4) + 4;
    EXPECT_GE(static_cast<double>(run.optimizer_state_bytes), bytes_per_element * share);
    EXPECT_LE(static_cast<double>(run.optimizer_state_bytes),
              bytes_per_element * (share + 2.0 * whole.params().size()));
  }
  if (l.distill && (l.tp > 1 || ep > 1)) {
    // The teacher (the student's shape) split over tp or its experts spread over ep.
    EXPECT_GT(run.teacher_parameters, 0);
    EXPECT_LT(run.teacher_parameters, model::Model(ep_config.model).params().num_elements());
  }
  if (l.cac) {
    // Every rank: one micro-batch a step, each MoE layer's recompute takes its first pass's two
    // exchanges, which sent as many bytes as the backward's two.
    const int64_t passes = l.steps * ep_config.model.num_moe_layers();
    EXPECT_EQ(run.exchange.exchanges, 4 * passes);
    EXPECT_EQ(run.exchange.exchanges_saved, 2 * passes);
    EXPECT_GT(run.exchange.bytes_saved, 0);
    EXPECT_EQ(run.exchange.bytes_sent, 2 * run.exchange.bytes_saved);
    EXPECT_GT(run.exchange.seconds, 0);
  }

  if (world.is_root()) {
    const std::string ref_training = R"(, "device": "cuda", "grad_accum": )" +
                                     std::to_string(world.size() / l.tp) + R"(, "steps": )" +
                                     std::to_string(l.steps) + R"(, "eval_every": )" +
                                     std::to_string(l.eval_every) + checkpointing;
    run_config(testing::write_config(corpus, ref_out, ref_training, nullptr, moe,
                                     optimizer + distill, model),
               &dist::Communicator::local());

    const Metrics a = read_metrics(ep_out + "/metrics.jsonl");
    const Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), static_cast<size_t>(l.steps));
    size_t evals = 0;  // every eval_every steps and after the last
    for (int step = 1; step <= l.steps; ++step)
      evals += l.eval_every > 0 && (step % l.eval_every == 0 || step == l.steps);
    ASSERT_EQ(b.eval.size(), evals);
    for (size_t i = 0; i < a.loss.size() && i < b.loss.size(); ++i)
      std::printf("[ info ] %s step %zu: loss %.6f distributed, %.6f in one process\n",
                  name.c_str(), i + 1, a.loss[i], b.loss[i]);
    std::printf("[ info ] %s: %lld routes dropped distributed, %lld in one process\n", name.c_str(),
                static_cast<long long>(a.dropped), static_cast<long long>(b.dropped));
    expect_near_rel(a.loss, b.loss, "loss", kTolerance);
    expect_near_rel(a.aux, b.aux, "aux loss", kTolerance);
    expect_near_rel(a.eval, b.eval, "eval loss", kTolerance);
    if (dropless || l.all_experts) {
      EXPECT_EQ(b.dropped, 0);
    } else {
      EXPECT_GT(b.dropped, 0) << "the capacity case drops no route: it tests no capacity";
    }
    // Every expert under its global name, weights and moments.
    report_checkpoint_differences(ep_out + "/final", ref_out + "/final");
    expect_same_checkpoint(ep_out + "/final", ref_out + "/final", kTolerance, l.moment_tolerance);
    fs::remove_all(corpus);
  }
  world.barrier();
}

TEST(GpuDataParallel, EqualsTheSingleProcessRun) {
  check_equals_single_process({});
}

// The HF peer's state under plain data parallelism: bf16 master weights, gradients and moments.
// The ranks' bf16 gradients are summed in one all-reduce where the single process adds its second
// micro-batch into the first's rounded gradients, so they differ by bf16 roundings (within the
// file's GPU tolerance); every rank steps its replica from the same sums.
TEST(GpuDataParallel, Bf16StateEqualsTheSingleProcessRun) {
  Layout l;
  l.bf16_master = l.bf16_grads = l.bf16_moments = true;
  l.moment_tolerance = 5e-2;  // bf16 moments of slightly different gradients
  check_equals_single_process(l);
}

// moex train on one GPU with bf16 master weights, gradients and moments, offloaded (the moments on
// the host, each tile of the bf16 master stepped there) against the same run without offload:
// the host's AdamW gives the GPU kernel's bits, so the losses and the checkpoints are equal.
// Rank 0 alone runs both (Communicator::local()).
TEST(GpuDataParallel, OffloadedBf16StateTrainsLikeTheGpuStep) {
  dist::Communicator& world = dist::Communicator::world();
  if (world.is_root()) {
    const fs::path corpus = fs::current_path() / "gpu_offload_bf16_state";
    testing::make_corpus(corpus);
    const std::string model =
        R"(, "vocab_size": 64, "hidden_size": 128, "num_heads": 4, "ffn_size": 256)";
    const std::string optimizer =
        R"(, "optimizer": {"lr": 0.01, "grad_clip": 1.0, "eps": 0.01, "moments_dtype": "bf16",
           "master_dtype": "bf16", "grads_dtype": "bf16"})";
    const std::string training = R"(, "device": "cuda", "steps": 4, "eval_every": 2)";
    auto run = [&](const std::string& out, const std::string& parallel) {
      const fs::path path =
          testing::write_config(corpus, (corpus / out).string(), training, nullptr,
                                R"(, "ffn_size": 64)", parallel + optimizer, model);
      return run_training(TrainConfig::from_file(path.string()), "", 0,
                          &dist::Communicator::local());
    };
    const TrainResult offloaded = run("offload", R"(, "parallel": {"offload": true})");
    const TrainResult on_gpu = run("gpu", "");
    EXPECT_EQ(offloaded.steps_done, 4);
    const Metrics a = read_metrics((corpus / "offload" / "metrics.jsonl").string());
    const Metrics b = read_metrics((corpus / "gpu" / "metrics.jsonl").string());
    ASSERT_EQ(a.loss.size(), 4u);
    EXPECT_EQ(a.loss, b.loss);
    expect_same_checkpoint((corpus / "offload" / "final").string(),
                           (corpus / "gpu" / "final").string(), 0.0, 0.0);
    fs::remove_all(corpus);
  }
  world.barrier();
}

// parallel.overlap_comm: each block's gradients are summed (no ZeRO, stage 1: all-reduced in
// place; stage 2: reduce-scattered from staging of their own) as soon as its backward has made
// them, detached from the model's stream over NCCL (the host-staged group runs them in order).
// GPU ranks refuse it under ep or tp (their backward's own collectives would run beside it).
TEST(GpuDataParallel, OverlappedReductionsEqualTheSingleProcessRun) {
  for (const Layout& base : {Layout{}, Layout{1, 1, false, 1}, Layout{1, 1, false, 2}}) {
    Layout l = base;
    l.overlap_comm = true;
    check_equals_single_process(l);
  }
  dist::Communicator& world = dist::Communicator::world();
  const fs::path corpus = fs::current_path() / "gpu_overlap_refused";
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  const fs::path path = testing::write_config(
      corpus, (corpus / "run").string(), R"(, "device": "cuda", "steps": 1)", &world, "",
      R"(, "parallel": {"ep": )" + std::to_string(world.size()) + R"(, "overlap_comm": true})");
  testing::expect_error_naming(
      [&] { run_training(TrainConfig::from_file(path.string()), "", 0, &world); },
      {"parallel.overlap_comm", "tp 1 and ep 1"});
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
}

TEST(GpuZero, StagesOneAndTwoEqualTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  check_equals_single_process({1, 1, false, 1});
  check_equals_single_process({1, 1, false, 2});
  // Experts sharded by ep, the rest of the state by ZeRO over dp.
  check_equals_single_process({1, w, true, 2});
}

// parallel.shard_master: the model holds bf16 weights and each rank's optimizer its shard of the
// fp32 master (the MoE routers read fp32 copies gathered from the shards), so the numbers are
// those of the whole fp32 master. Every token goes to every expert (no routing ties), and stage 2
// runs with ep too.
TEST(GpuZero, ShardedMasterEqualsTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  for (const int stage : {1, 2}) {
    Layout l{1, 1, false, stage};
    l.shard_master = l.all_experts = true;
    check_equals_single_process(l);
  }
  Layout ep{1, w, true, 2};
  ep.shard_master = ep.all_experts = true;
  check_equals_single_process(ep);
}

// ZeRO-Offload over the ranks: each rank steps its shards of the master weights and moments on
// the host (stages 1 and 2; stage 2 with ep too; each with the master sharded too), the reference
// on the GPU. The host's AdamW gives
// the GPU kernel's bits (on the H200 the dp runs ended with every weight and moment equal), but
// under ep the experts' gradients differ in their last bits (1e-8), and a bf16 weight that rounds
// the other way can move a token across a routing tie: the ep run routes every token to every
// expert (see the file comment); with top-2 of 4 two MoE tensors' moments once ended 2.5 % off.
TEST(GpuZero, OffloadedStagesEqualTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  for (const int stage : {1, 2}) {
    Layout l{1, 1, false, stage};
    l.offload = true;
    check_equals_single_process(l);
  }
  Layout ep{1, w, true, 2};
  ep.offload = true;
  ep.all_experts = true;
  check_equals_single_process(ep);
  // parallel.shard_master: each rank's host keeps only its shard of the fp32 master; the model's
  // bf16 weights are all-gathered on the GPUs.
  for (const int stage : {1, 2}) {
    Layout l{1, 1, false, stage};
    l.offload = l.shard_master = l.all_experts = true;
    check_equals_single_process(l);
  }
  ep.shard_master = true;
  check_equals_single_process(ep);
}

// bf16 moments (optimizer.moments_dtype) in both runs: ZeRO stage 2 with ep sharding them on the
// GPUs, and offloaded to the hosts' CPU AdamW. Without ep the runs are equal. With ep the experts'
// gradients differ from the single process's in their last bits, each such element draws other
// stochastic rounding bits (docs/architecture.md §Numerics), and the difference spreads: on the
// H200 most moments ended 3-5e-3 apart, the router's exp_avg 2.2e-2 (512 elements, the most
// sensitive gradient), weights 4e-5 at most. Moments are held to 5e-2 here.
TEST(GpuZero, Bf16MomentsEqualTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  Layout sharded{1, w, true, 2};
  sharded.bf16_moments = true;
  sharded.moment_tolerance = 5e-2;
  check_equals_single_process(sharded);
  Layout offloaded{1, 1, false, 2};
  offloaded.offload = true;
  offloaded.bf16_moments = true;
  check_equals_single_process(offloaded);
}

// A bf16 master (no fp32 master anywhere) under ZeRO: each rank steps its shard pieces of the bf16
// weights with its shard of the moments and all-gathers the weights on the GPUs; on the GPUs and
// offloaded (each piece's weights and gradients down, stepped on the host, up again). Stage 1
// sums bf16 gradients in bf16; stage 2 widens each streamed bucket of bf16 gradients into its
// fp32 shard sums, and also takes fp32 gradients with the bf16 master. Against one GPU with the
// same optimizer settings and no ZeRO. ep runs route every token to every expert (see the file
// comment).
TEST(GpuZero, Bf16MasterEqualsTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  for (const bool offload : {false, true}) {
    Layout stage1{1, 1, false, 1};
    Layout stage2_ep{1, w, true, 2};
    stage2_ep.all_experts = true;
    Layout stage2_fp32_grads{1, 1, false, 2};
    for (Layout* l : {&stage1, &stage2_ep, &stage2_fp32_grads}) {
      l->offload = offload;
      l->bf16_master = l->bf16_moments = true;
      l->bf16_grads = l != &stage2_fp32_grads;
      l->moment_tolerance = 5e-2;
      check_equals_single_process(*l);
    }
  }
}

// A bf16-master run stopped midway and resumed from its checkpoint (which holds fp32 weights and
// moments, gathered over the ranks) ends as the uninterrupted single process does: under ZeRO
// stage 1, under ep with stage 2 and bf16 gradients, under tp, and ZeRO stage 2 with bf16
// gradients and overlap_comm (each bucket's bf16 gradients reduce-scattered as backward ends).
TEST(GpuZero, Bf16MasterRunResumedMidwayEqualsTheSingleProcessRun) {
  const int w = dist::Communicator::world().size();
  Layout stage1{1, 1, false, 1};
  Layout stage2_ep{1, w, true, 2};
  stage2_ep.all_experts = true;
  Layout tp{w, 1};
  tp.all_experts = true;
  // Capacity routing with bf16 gradients summed in another order moved routes across the
  // capacity boundary here (moments 6-9 % apart on an H100): every token to every expert.
  Layout overlapped{1, 1, true, 2};
  overlapped.overlap_comm = overlapped.all_experts = true;
  for (Layout* l : {&stage1, &stage2_ep, &tp, &overlapped}) {
    l->bf16_master = l->bf16_moments = true;
    l->bf16_grads = l != &stage1;
    l->moment_tolerance = 5e-2;
    l->resume_at = 2;
    check_equals_single_process(*l);
  }
}

// ep = every rank: each holds 1/W of the experts.
TEST(GpuExpertParallel, CapacityRoutingEqualsTheSingleProcessRun) {
  check_equals_single_process({1, dist::Communicator::world().size(), false});
}

// The HF peer's state (bf16 master weights, gradients and moments) under ep = every rank: each
// rank's experts' bf16 gradients summed over edp, the rest over dp, in bf16, and every replica of
// a tensor stepping the same sums. The experts' GEMMs see other row counts than in the single
// process, so their gradients differ by bf16 roundings and so do the stochastic rounding bits drawn
// from them; every token goes to every expert, so no such difference moves a route (see the file
// comment). Moments within 5e-2, as for bf16 moments under ep with ZeRO below.
TEST(GpuExpertParallel, Bf16StateEqualsTheSingleProcessRun) {
  Layout l{1, dist::Communicator::world().size()};
  l.all_experts = true;
  l.bf16_master = l.bf16_grads = l.bf16_moments = true;
  l.moment_tolerance = 5e-2;
  check_equals_single_process(l);
}

// Communication-aware activation checkpointing: the recompute reuses the first pass's exchange.
TEST(GpuExpertParallel, CacEqualsTheSingleProcessRun) {
  Layout cac{1, dist::Communicator::world().size(), false, 0, true};
  cac.eval_every = 0;
  check_equals_single_process(cac);
}

// Activation checkpointing without CAC: the recompute exchanges again.
TEST(GpuExpertParallel, CheckpointedEqualsTheSingleProcessRun) {
  Layout checkpointed{1, dist::Communicator::world().size()};
  checkpointed.checkpointing = true;
  check_equals_single_process(checkpointed);
}

TEST(GpuExpertParallel, DroplessRoutingEqualsTheSingleProcessRun) {
  check_equals_single_process({1, dist::Communicator::world().size(), true});
}

// Distillation under ep = every rank: the teacher's MoE layers hold this rank's experts too and
// exchange tokens over the GPU expert group in its forward; every token to every expert (see the
// file comment).
TEST(GpuExpertParallel, DistillationEqualsTheSingleProcessRun) {
  Layout ep{1, dist::Communicator::world().size()};
  ep.all_experts = true;
  ep.distill = true;
  check_equals_single_process(ep);
}

// Megatron splits of attention, the dense MLP, the embedding and the LM head (vocabulary-parallel
// cross-entropy) over tp = every rank, every token to every expert (see the file comment). One
// step first: its Adam moments are the first gradients, compared tensor by tensor.
TEST(GpuTensorParallel, FirstStepEqualsTheSingleProcessRun) {
  Layout tp{dist::Communicator::world().size()};
  tp.all_experts = true;
  tp.steps = 1;
  check_equals_single_process(tp);
}

TEST(GpuTensorParallel, EqualsTheSingleProcessRun) {
  Layout tp{dist::Communicator::world().size()};
  tp.all_experts = true;
  check_equals_single_process(tp);
}

// bf16 master weights, gradients and moments under tp = every rank: each rank steps its parts of
// the split tensors and its replica of the whole ones (norms, routers, experts: every tp rank
// computes their gradients from the same summed activations); the gradient norm sums the parts'
// squares over tp.
TEST(GpuTensorParallel, Bf16StateEqualsTheSingleProcessRun) {
  Layout l{dist::Communicator::world().size(), 1};
  l.all_experts = true;
  l.bf16_master = l.bf16_grads = l.bf16_moments = true;
  l.moment_tolerance = 5e-2;
  check_equals_single_process(l);
}

// Distillation under tp: the student's vocabulary-parallel KD term (the teacher split over tp like
// the student, its logits of each rank's vocabulary rows).
TEST(GpuTensorParallel, DistillationEqualsTheSingleProcessRun) {
  Layout tp{dist::Communicator::world().size()};
  tp.all_experts = true;
  tp.distill = true;
  check_equals_single_process(tp);
}

// Expert tensor-slicing: each tp rank holds half of every expert's hidden width; the expert rows
// are summed over tp.
TEST(GpuTensorParallel, ExpertSlicingEqualsTheSingleProcessRun) {
  Layout tp{dist::Communicator::world().size()};
  tp.all_experts = true;
  tp.expert_slicing = true;
  TrainResult run;
  check_equals_single_process(tp, &run);
  EXPECT_GT(run.exchange.slice_reduce_bytes, 0);
}

// Serving under tp = every rank (moex serve / generate --tp) on GPU ranks: one paged prefill
// step and one decode step of two sequences (the vocabulary-slice embedding of device ids, the
// attention output all-reduced, the logits' slices gathered on the device before sampling)
// within bf16 rounding of one process holding the whole model (2e-2 relative L2, as the GPU's
// Hugging Face parity); then tp rank 0's scheduler serving four greedy requests while the other
// ranks mirror its steps (decode steps take their ids from the last step on the device): each
// token equals the whole model's wherever the whole model's top-2 margin exceeds bf16 noise,
// up to the first token where the two differ (their contexts differ after it). slicing: each
// expert's hidden width split over tp too (--expert-slicing; the decode kernels read the slices).
void check_paged_serving(bool slicing) {
  dist::Communicator& world = dist::Communicator::world();
  const fs::path corpus =
      testing::make_temp_corpus("gpu_tp_serve_r" + std::to_string(world.rank()));
  // Sliced, each rank's part of an expert must be a multiple of 8 wide on the GPU.
  const TrainConfig c =
      TrainConfig::from_file(testing::write_config(corpus, (corpus / "unused").string(), "",
                                                   nullptr, slicing ? R"(, "ffn_size": 32)" : "")
                                 .string());
  fs::remove_all(corpus);
  // Weights far larger than a fresh model's: decisive logits, so most greedy tokens have a top-2
  // margin above bf16 noise and are compared below.
  ModelConfig config = c.model;
  config.init_std = 0.5f;
  const Device gpu = Device::cuda(0);
  dist::NcclOptions nccl;
  nccl.device = 0;
  const std::unique_ptr<dist::DeviceGroup> group = dist::make_device_group(world, nccl);
  model::TensorParallel tp{&world, group.get()};
  tp.slice_experts = slicing;
  model::Model split(config, gpu, nullptr, tp);
  model::Model whole(config, gpu);
  split.init_weights(21);
  whole.init_weights(21);
  const bool root = world.rank() == 0;
  const int64_t vocab = config.vocab_size;
  model::PagedKV kv_split = split.make_paged_kv(8, 4), kv_whole = whole.make_paged_kv(8, 4);
  const std::vector<int32_t> blocks0{0, 1}, blocks1{5, 2};
  const std::vector<model::SequenceSlice> prefill{{0, 5, blocks0.data(), 2, false},
                                                  {0, 3, blocks1.data(), 2, false}};
  const std::vector<int32_t> ids{3, 14, 15, 9, 26, 5, 35, 8};
  const std::vector<model::SequenceSlice> decode{{5, 1, blocks0.data(), 2, false},
                                                 {3, 1, blocks1.data(), 2, false}};
  const std::vector<int32_t> decode_ids{7, 11};
  if (root) {
    std::vector<float> a(2 * vocab), b(a.size());
    split.forward_paged(ids.data(), prefill, kv_split, a.data());
    whole.forward_paged(ids.data(), prefill, kv_whole, b.data());
    const double prefill_diff = testing::rel_l2(a.data(), b.data(), 2 * vocab);
    split.forward_paged(decode_ids.data(), decode, kv_split, a.data());
    whole.forward_paged(decode_ids.data(), decode, kv_whole, b.data());
    const double decode_diff = testing::rel_l2(a.data(), b.data(), 2 * vocab);
    split.end_mirrored_steps();
    std::printf(
        "paged steps' logits, relative L2 against the whole model: prefill %.2e, decode "
        "%.2e\n",
        prefill_diff, decode_diff);
    EXPECT_LT(prefill_diff, kTolerance);
    EXPECT_LT(decode_diff, kTolerance);
  } else {
    split.mirror_paged_steps(kv_split);
  }

  infer::SchedulerOptions options;
  options.max_batch = 3;
  options.step_tokens = 8;
  options.block_size = 4;
  options.max_context = 32;
  const std::vector<std::vector<int32_t>> prompts{
      {1, 2, 3, 4, 5}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13}, {20, 21, 22}, {30, 31}};
  constexpr int64_t kTokens = 10;
  auto serve = [&](model::Model& m, bool with_logprobs, std::vector<std::vector<int32_t>>& tokens,
                   std::vector<std::vector<infer::TokenLogprob>>& logprobs) {
    infer::Scheduler scheduler(m, options);
    if (m.tensor_parallel().rank() != 0) {
      scheduler.mirror();
      return;
    }
    tokens.assign(prompts.size(), {});
    logprobs.assign(prompts.size(), {});
    for (size_t i = 0; i < prompts.size(); ++i) {
      infer::Request r;
      r.prompt = prompts[i];
      r.max_tokens = kTokens;
      if (with_logprobs) {
        r.logprobs = 2;
        r.on_logprob = [&logprobs, i](const infer::TokenLogprob& p) { logprobs[i].push_back(p); };
      }
      r.on_token = [&tokens, i](int32_t t) {
        tokens[i].push_back(t);
        return true;
      };
      scheduler.submit(std::move(r));
    }
    while (scheduler.step()) {
    }
  };
  std::vector<std::vector<int32_t>> a, b;
  std::vector<std::vector<infer::TokenLogprob>> unused, lp;
  serve(split, false, a, unused);
  if (!root) return;
  serve(whole, true, b, lp);
  // The logits are large (init_std above) and their bf16 rounding about 1 % relative (the paged
  // steps above): half a nat is well above it.
  constexpr float kMargin = 0.5f;
  int64_t compared = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(a[i].size(), static_cast<size_t>(kTokens)) << "request " << i;
    ASSERT_EQ(lp[i].size(), static_cast<size_t>(kTokens)) << "request " << i;
    for (int64_t t = 0; t < kTokens; ++t) {
      const infer::TokenLogprob& p = lp[i][static_cast<size_t>(t)];
      ASSERT_EQ(p.top.size(), 2u);
      const float margin = p.top[0].second - p.top[1].second;
      if (margin > kMargin) {
        EXPECT_EQ(a[i][static_cast<size_t>(t)], b[i][static_cast<size_t>(t)])
            << "request " << i << " token " << t << ", top-2 margin " << margin;
        ++compared;
      }
      if (a[i][static_cast<size_t>(t)] != b[i][static_cast<size_t>(t)]) break;
    }
  }
  std::printf("served tokens compared with the whole model's: %lld of %lld\n",
              static_cast<long long>(compared), static_cast<long long>(prompts.size() * kTokens));
  EXPECT_GE(compared, 10);
}

TEST(GpuTensorParallel, PagedServingEqualsTheSingleProcess) {
  check_paged_serving(false);
}

TEST(GpuTensorParallel, PagedServingWithSlicedExpertsEqualsTheSingleProcess) {
  check_paged_serving(true);
}

// Four ranks (gpu_check.sh runs the GpuFourRanks tests under mpirun -np 4): tp 2 x ep 2, then the
// same with Duplicate Token Dropping, which sends each expert row once per tp group instead of
// once per tp rank: over the world, half the exchanged bytes, and the same numbers.
TEST(GpuFourRanks, TensorTimesExpertParallelWithAndWithoutDtd) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_EQ(world.size(), 4) << "run the GpuFourRanks tests with mpirun -np 4";
  Layout layout{2, 2};
  layout.all_experts = true;
  TrainResult plain, dtd;
  check_equals_single_process(layout, &plain);
  layout.dtd = true;
  check_equals_single_process(layout, &dtd);
  double bytes[2] = {static_cast<double>(plain.exchange.bytes_sent),
                     static_cast<double>(dtd.exchange.bytes_sent)};
  world.all_reduce_sum(bytes, 2);
  EXPECT_GT(bytes[0], 0);
  EXPECT_EQ(bytes[1] * 2, bytes[0]) << "DTD sends each tp group's rows once";
  EXPECT_EQ(plain.exchange.gather_bytes_sent, 0);
  EXPECT_GT(dtd.exchange.gather_bytes_sent, 0);
  // And with the experts sliced over tp on top: tp, ep, DTD and slicing together.
  layout.expert_slicing = true;
  TrainResult sliced;
  check_equals_single_process(layout, &sliced);
  EXPECT_GT(sliced.exchange.slice_reduce_bytes, 0);
}

// bf16 master weights, gradients and moments in the four-rank layouts: tp 2 x ep 2 with DTD, and
// tp 2 x dp 2 under ZeRO stage 1, offloaded (each rank's shard pieces of its tp parts stepped on
// its host). Every token to every expert (see the file comment).
TEST(GpuFourRanks, Bf16StateUnderTensorExpertParallelismAndZero) {
  ASSERT_EQ(dist::Communicator::world().size(), 4)
      << "run the GpuFourRanks tests with mpirun -np 4";
  Layout ted{2, 2};
  ted.all_experts = ted.dtd = true;
  ted.bf16_master = ted.bf16_grads = ted.bf16_moments = true;
  ted.moment_tolerance = 5e-2;
  check_equals_single_process(ted);
  Layout zero{2, 1, true, 1};
  zero.all_experts = zero.offload = true;
  zero.bf16_master = zero.bf16_grads = zero.bf16_moments = true;
  zero.moment_tolerance = 5e-2;
  check_equals_single_process(zero);
}

// parallel.shard_master under tensor parallelism: tp 2 x dp 2, ZeRO stage 2 with the fp32 master
// sharded over dp (each tp rank's parts), on the GPUs and offloaded to the hosts.
TEST(GpuFourRanks, ShardedMasterUnderTensorParallelism) {
  ASSERT_EQ(dist::Communicator::world().size(), 4)
      << "run the GpuFourRanks tests with mpirun -np 4";
  for (const bool offload : {false, true}) {
    Layout layout{2, 1, true, 2};
    layout.all_experts = layout.shard_master = true;
    layout.offload = offload;
    check_equals_single_process(layout);
  }
}

}  // namespace
}  // namespace moex::train
