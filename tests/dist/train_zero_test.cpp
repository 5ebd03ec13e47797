// Run under mpirun with 2 and 4 ranks (see CMakeLists.txt): ZeRO stages 1 and 2, with data
// parallelism alone and with ep 2 (np 4: ep 2 x edp 2), must equal the single-process run on the
// same global batch, as in train_expert_parallel_test.cpp: losses and eval losses within 1e-5
// relative, final weights and every Adam moment within 1e-5 relative L2. A small optimizer tile
// makes every shard take many tiles. Each rank must hold about 1/dp of the Adam state (experts:
// 1/edp of its E/ep experts), and a checkpoint saved under ZeRO must resume in other layouts.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "train/checkpoint.h"
#include "train/load_balance.h"
#include "train/trainer.h"
#include "train_compare.h"
#include "train_fixture.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

using testing::expect_near_rel;
using testing::expect_same_checkpoint;
using testing::read_metrics;

constexpr int64_t kTile = 1000;  // elements; the model has ~20 k parameters

constexpr const char* kBf16Moments =
    R"(, "optimizer": {"lr": 0.01, "grad_clip": 1.0, "moments_dtype": "bf16"})";

std::string parallel(int zero_stage, int ep) {
  return R"(, "parallel": {"zero_stage": )" + std::to_string(zero_stage) + R"(, "ep": )" +
         std::to_string(ep) + R"(, "tile_elements": )" + std::to_string(kTile) + "}";
}

// Elements of the non-expert and the expert parameters of the whole model, and the most padding a
// rank's buffer can add to its shards (64-element alignment per tensor, rounding up per kind).
struct ParamCounts {
  int64_t non_expert = 0, expert = 0, slack = 0;
  int64_t total = 0;  // the buffer's elements, padding included
};

ParamCounts count_params(const TrainConfig& c) {
  model::Model m(c.model, Device::cpu());
  ParamCounts n;
  for (int i = 0; i < m.params().size(); ++i)
    (m.is_expert_param(i) ? n.expert : n.non_expert) += m.params().tensor(i).numel();
  n.slack = 64 * m.params().size() + 2;
  n.total = m.params().total_elements();
  return n;
}

// Every rank's Adam state must be its 1/dp share of the non-expert moments plus 1/edp of its
// ep rank's E/ep experts, i.e. 1/dp of all moments, up to alignment padding: far from the
// whole state of an unsharded rank.
void expect_sharded_state(const TrainConfig& c, int64_t bytes, dist::Communicator& world) {
  const double moment_bytes = static_cast<double>(dtype_size(c.optimizer.moments_dtype));
  std::vector<int64_t> all(static_cast<size_t>(world.size()));
  world.all_gather(&bytes, all.data(), 1);
  if (!world.is_root()) return;
  const ParamCounts n = count_params(c);
  const int64_t dp = world.size();
  const double share = 2.0 * moment_bytes * static_cast<double>(n.non_expert + n.expert) / dp;
  for (size_t r = 0; r < all.size(); ++r) {
    EXPECT_GE(static_cast<double>(all[r]), share) << "rank " << r;
    EXPECT_LE(static_cast<double>(all[r]), share + 2.0 * moment_bytes * n.slack) << "rank " << r;
  }
}

// One corpus per test and world size (the np 2 and np 4 runs may run at once), written by the
// root before any rank reads it.
fs::path corpus_of_world(const std::string& prefix, dist::Communicator& world) {
  const fs::path corpus = fs::current_path() / (prefix + std::to_string(world.size()));
  if (world.is_root()) testing::make_corpus(corpus);
  world.barrier();
  return corpus;
}

// The reference of both tests: one process, grad_accum = world size, ZeRO off.
std::string reference_training(int world, int steps) {
  return R"(, "grad_accum": )" + std::to_string(world) + R"(, "steps": )" + std::to_string(steps) +
         R"(, "eval_every": 2)";
}

TEST(Zero, EveryStageAndLayoutEqualsTheSingleProcessRun) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = corpus_of_world("zero_test_np", world);

  const std::string ref_out = (corpus / "ref").string();
  TrainResult ref_result;
  if (world.is_root()) {
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out, reference_training(world.size(), 4)).string());
    ref_result = run_training(ref, "", 0, &dist::Communicator::local());
  }
  const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 2)";
  for (const int zero_stage : {1, 2}) {
    for (const int ep : {1, 2}) {
      SCOPED_TRACE("zero_stage " + std::to_string(zero_stage) + ", ep " + std::to_string(ep));
      const std::string out =
          (corpus / ("zero" + std::to_string(zero_stage) + "_ep" + std::to_string(ep))).string();
      const TrainConfig config = TrainConfig::from_file(
          testing::write_config(corpus, out, training, &world, "", parallel(zero_stage, ep))
              .string());
      const TrainResult result = run_training(config, "", 0, &world);
      expect_sharded_state(config, result.optimizer_state_bytes, world);
      if (world.is_root()) {
        const testing::Metrics a = read_metrics(out + "/metrics.jsonl");
        const testing::Metrics b = read_metrics(ref_out + "/metrics.jsonl");
        ASSERT_EQ(b.loss.size(), 4u);
        ASSERT_EQ(b.eval.size(), 2u);
        expect_near_rel(a.loss, b.loss, "loss");
        expect_near_rel(a.aux, b.aux, "aux loss");
        expect_near_rel(a.eval, b.eval, "eval loss");
        expect_same_checkpoint(out + "/final", ref_out + "/final");
        // The unsharded reference holds every moment.
        EXPECT_GT(ref_result.optimizer_state_bytes, result.optimizer_state_bytes);
      }
      world.barrier();
    }
  }
  if (world.is_root()) fs::remove_all(corpus);
  world.barrier();
}

// ZeRO stage 2 streams each gradient bucket into the shards as backward makes it, every
// micro-batch: with two micro-batches per rank, on an 8-layer model (the edges and one block's
// window are then a small part of the gradients), it must still equal the single process (ep 2
// at np 4). Each rank holds the model's streamed buckets (the embedding, the head and one block's
// window) and its shard's sums, 1/dp of the gradients: less than the single process's whole
// buffer, and within the shard plus those buckets.
TEST(Zero, StageTwoStreamsGradientsOverMicroBatches) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = corpus_of_world("zero_stream_np", world);
  const std::string deep = R"(, "num_layers": 8)";
  const std::string ref_out = (corpus / "ref").string(), out = (corpus / "zero2").string();
  TrainResult ref_result;
  if (world.is_root()) {
    const std::string ref_training = R"(, "grad_accum": )" + std::to_string(2 * world.size()) +
                                     R"(, "steps": 3, "eval_every": 3)";
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out, ref_training, nullptr, "", "", deep).string());
    ref_result = run_training(ref, "", 0, &dist::Communicator::local());
  }
  const std::string training = R"(, "grad_accum": 2, "steps": 3, "eval_every": 3)";
  const int ep = world.size() >= 4 ? 2 : 1;
  const TrainConfig config = TrainConfig::from_file(
      testing::write_config(corpus, out, training, &world, "", parallel(2, ep), deep).string());
  const TrainResult result = run_training(config, "", 0, &world);
  expect_sharded_state(config, result.optimizer_state_bytes, world);
  std::vector<int64_t> bytes(static_cast<size_t>(world.size()));
  world.all_gather(&result.gradient_bytes, bytes.data(), 1);
  if (world.is_root()) {
    const testing::Metrics a = read_metrics(out + "/metrics.jsonl");
    const testing::Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 3u);
    expect_near_rel(a.loss, b.loss, "loss");
    expect_near_rel(a.eval, b.eval, "eval loss");
    expect_same_checkpoint(out + "/final", ref_out + "/final");

    const ParamCounts n = count_params(config);
    model::ModelState streamed;
    streamed.stream_gradients = true;
    // The buckets of the whole model: under ep a rank's MoE window is smaller.
    const int64_t buckets =
        model::Model(config.model, Device::cpu(), nullptr, {}, false, streamed).gradient_bytes();
    const double shard = 4.0 * static_cast<double>(n.non_expert + n.expert) / world.size();
    EXPECT_EQ(ref_result.gradient_bytes, 4 * n.total);
    for (size_t r = 0; r < bytes.size(); ++r) {
      EXPECT_LT(bytes[r], ref_result.gradient_bytes) << "rank " << r;
      EXPECT_GE(static_cast<double>(bytes[r]), shard) << "rank " << r;
      EXPECT_LE(static_cast<double>(bytes[r]), buckets + shard + 4.0 * n.slack) << "rank " << r;
    }
  }
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
  world.barrier();
}

// The entries of a parameter buffer (the padding between them left out), on the host.
std::vector<float> entries_of(const ParamBuffer& buffer, const Tensor& flat) {
  std::vector<float> out;
  for (int i = 0; i < buffer.size(); ++i) {
    const float* at = flat.data<float>() + buffer.offset(i);
    out.insert(out.end(), at, at + buffer.tensor(i).numel());
  }
  return out;
}

// ZeroConfig::shard_master (what GPU ranks use under ZeRO, with bf16 weights in the model): the
// optimizer keeps its shard of the fp32 master and steps the model's weights from it. On CPU
// ranks, where the model's weights are fp32 too, every step must give the unsharded optimizer's
// weights bit for bit, also after the model's own weights were changed behind the optimizer's
// back (it steps from its master, not from them); a checkpoint must hold the master, and loading
// it into another model and optimizer must continue alike.
TEST(Zero, ShardedMasterStepsLikeTheWholeOptimizer) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = corpus_of_world("zero_master_np", world);
  // With a selection bias: updated by the load-balancing rule, in no shard.
  const TrainConfig c = TrainConfig::from_file(
      testing::write_config(corpus, (corpus / "out").string(), "", &world,
                            R"(, "score_func": "sigmoid", "selection_bias": true)")
          .string());
  OptimizerConfig oc = c.optimizer;
  oc.weight_decay = 0.1;
  model::Model whole_model(c.model), model(c.model), resumed(c.model);
  whole_model.init_weights(5);
  model.init_weights(5);
  resumed.init_weights(6);
  AdamW whole(whole_model.params(), oc);
  ZeroConfig zero;
  zero.stage = 1;
  zero.dp = zero.edp = &world;
  zero.tile_elements = kTile;
  AdamW unsharded_master(model, oc, zero);
  zero.shard_master = true;
  AdamW sharded(model, oc, zero), resumed_opt(resumed, oc, zero);
  ASSERT_TRUE(sharded.shards_master());
  sharded.load_master(model.params().flat());
  // The moments' 8 bytes an element of the shard, and 4 more for the master.
  EXPECT_EQ(2 * sharded.state_bytes(), 3 * unsharded_master.state_bytes());

  // The MoE layer reads fp32 copies of its router and selection bias, kept by the optimizer.
  ASSERT_EQ(model.rule_params().size(), 1u);
  ASSERT_EQ(model.router_params().size(), 1u);
  const int bias = model.rule_params()[0], router = model.router_params()[0];
  EXPECT_TRUE(model.fp32_weight(bias).defined() && model.fp32_weight(router).defined());
  EXPECT_FALSE(whole_model.fp32_weight(router).defined());

  // The same gradients on every rank (as if all-reduced), different each step; none for the
  // selection bias, as in training.
  auto set_grads = [bias](model::Model& m, int64_t step) {
    const ParamBuffer& g = m.grads();
    for (int i = 0; i < g.size(); ++i)
      for (int64_t k = 0; k < g.tensor(i).numel(); ++k)
        g.tensor(i).data<float>()[k] = i == bias ? 0.0f : 2 * philox_uniform(40 + step, i, k) - 1;
  };
  auto perturb = [](model::Model& m) {
    const Tensor& w = m.params().flat();
    for (int64_t k = 0; k < w.numel(); ++k) w.data<float>()[k] += 1.0f;
  };
  const ParamBuffer& layout = model.params();
  for (int64_t step = 1; step <= 3; ++step) {
    set_grads(whole_model, step);
    set_grads(model, step);
    if (step == 3) perturb(model);
    whole.step(whole_model.params(), whole_model.grads(), 0.01, step);
    sharded.step(model, 0.01, step);
    if (step == 2) {
      // The rule moves the bias from its fp32 master copy (the model's, changed here, is not
      // read), and the next step's all-gather leaves it alone.
      const ExpertLoads loads = {{1, {5.0, 1.0, 3.0, 3.5}}};
      update_selection_bias(whole_model, loads, 0.05);
      model.params().tensor(bias).data<float>()[0] += 1.0f;
      update_selection_bias(model, loads, 0.05);
    }
    ASSERT_EQ(entries_of(layout, model.params().flat()),
              entries_of(layout, whole_model.params().flat()))
        << "step " << step;
  }
  const std::vector<float> want = entries_of(layout, whole_model.params().flat());
  EXPECT_EQ(entries_of(layout, sharded.gather_master()), want);
  auto values = [](const Tensor& t) {
    return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
  };
  for (const int i : {router, bias})
    EXPECT_EQ(values(model.fp32_weight(i)), values(whole_model.params().tensor(i))) << i;
  // The router the MoE layer reads is the copy: changing the model's own leaves the loss alone.
  std::vector<int32_t> ids(16), targets(16);
  for (int k = 0; k < 16; ++k) ids[k] = (7 * k + 3) % 40, targets[k] = (5 * k + 1) % 40;
  auto loss = [&](model::Model& m) { return m.forward(ids.data(), targets.data(), 2, 8, {}).loss; };
  const double want_loss = loss(whole_model);
  const Tensor& own_router = model.params().tensor(router);
  for (int64_t k = 0; k < own_router.numel(); ++k) own_router.data<float>()[k] *= -3.0f;
  EXPECT_EQ(loss(model), want_loss);

  // Saved with the model's weights changed: the checkpoint holds the master.
  perturb(model);
  const std::string dir = (corpus / "ckpt").string();
  TrainerState state;
  state.step = 3;
  state.data_state = "{}";
  save_checkpoint(dir, model, c.model_json, sharded, state, {}, world.is_root());
  world.barrier();
  load_checkpoint(dir, resumed, resumed_opt);
  EXPECT_EQ(entries_of(layout, resumed.params().flat()), want);
  EXPECT_EQ(entries_of(layout, resumed_opt.gather_master()), want);
  for (const int i : {router, bias})
    EXPECT_EQ(values(resumed.fp32_weight(i)), values(whole_model.params().tensor(i))) << i;
  for (const bool second : {false, true})
    EXPECT_EQ(entries_of(layout, resumed_opt.gather_moment(second)),
              entries_of(layout, whole.gather_moment(second)));
  set_grads(whole_model, 4);
  set_grads(resumed, 4);
  whole.step(whole_model.params(), whole_model.grads(), 0.01, 4);
  resumed_opt.step(resumed, 0.01, 4);
  EXPECT_EQ(entries_of(layout, resumed.params().flat()),
            entries_of(layout, whole_model.params().flat()));
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
  world.barrier();
}

// bf16 moments (optimizer.moments_dtype) under ZeRO stage 2 with ep 2 against the single process
// with bf16 moments. Their rounding bits come from each element's gradient and weight, not its
// place; but the gradient sums' order differs from the single process in the last bits, and a
// changed bit picks other rounding bits for that element, so the two runs' rounding noise is
// independent: most moments end a bf16 unit or so apart (4-5e-3 relative L2 measured at np 2 and
// 4, weights 1-2e-4). Tolerances: moments 1e-2, weights 5e-4, losses 1e-4 relative; a misplaced
// shard or a moment read in the wrong type is off by far more.
TEST(Zero, Bf16MomentsEqualTheSingleProcessRun) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = corpus_of_world("zero_bf16_np", world);
  const std::string ref_out = (corpus / "ref").string(), out = (corpus / "zero2_ep2").string();
  if (world.is_root()) {
    const TrainConfig ref = TrainConfig::from_file(
        testing::write_config(corpus, ref_out, reference_training(world.size(), 4), nullptr, "",
                              kBf16Moments)
            .string());
    run_training(ref, "", 0, &dist::Communicator::local());
  }
  const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 2)";
  const TrainConfig config =
      TrainConfig::from_file(testing::write_config(corpus, out, training, &world, "",
                                                   std::string(kBf16Moments) + parallel(2, 2))
                                 .string());
  const TrainResult result = run_training(config, "", 0, &world);
  expect_sharded_state(config, result.optimizer_state_bytes, world);
  if (world.is_root()) {
    const testing::Metrics a = read_metrics(out + "/metrics.jsonl");
    const testing::Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 4u);
    expect_near_rel(a.loss, b.loss, "loss", 1e-4);
    expect_near_rel(a.eval, b.eval, "eval loss", 1e-4);
    expect_same_checkpoint(out + "/final", ref_out + "/final", 5e-4, 1e-2);
  }
  world.barrier();
  if (world.is_root()) fs::remove_all(corpus);
  world.barrier();
}

// A checkpoint saved under ZeRO stage 1 (dp only) holds the whole Adam state under the global
// names: resumed single-process it continues exactly as the uninterrupted single-process run,
// and resumed under ZeRO stage 2 with ep 2 it continues as the single process does.
TEST(Zero, CheckpointMovesBetweenLayouts) {
  dist::Communicator& world = dist::Communicator::world();
  ASSERT_GE(world.size(), 2) << "run this test with mpirun -np 2 (or more)";
  const fs::path corpus = corpus_of_world("zero_resume_np", world);

  const std::string training = R"(, "grad_accum": 1, "steps": 4, "eval_every": 2)";
  const std::string first_out = (corpus / "first").string(), zero_out = (corpus / "zero").string(),
                    ref_out = (corpus / "ref").string(), whole_out = (corpus / "whole").string();
  const TrainConfig first = TrainConfig::from_file(
      testing::write_config(corpus, first_out, training, &world, "", parallel(1, 1)).string());
  run_training(first, "", 2, &world);  // two steps, then a "latest" checkpoint
  const std::string saved = first_out + "/latest";

  const TrainConfig zero = TrainConfig::from_file(
      testing::write_config(corpus, zero_out, training, &world, "", parallel(2, 2)).string());
  run_training(zero, saved, 0, &world);

  if (world.is_root()) {
    const std::string ref_training = reference_training(world.size(), 4);
    const TrainConfig ref =
        TrainConfig::from_file(testing::write_config(corpus, ref_out, ref_training).string());
    run_training(ref, saved, 0, &dist::Communicator::local());
    const TrainConfig whole =
        TrainConfig::from_file(testing::write_config(corpus, whole_out, ref_training).string());
    run_training(whole, "", 0, &dist::Communicator::local());

    const testing::Metrics a = read_metrics(zero_out + "/metrics.jsonl");
    const testing::Metrics b = read_metrics(ref_out + "/metrics.jsonl");
    const testing::Metrics w = read_metrics(whole_out + "/metrics.jsonl");
    ASSERT_EQ(b.loss.size(), 2u);  // steps 3 and 4
    ASSERT_EQ(w.loss.size(), 4u);
    expect_near_rel(a.loss, b.loss, "loss after resuming under ZeRO 2, ep 2");
    expect_near_rel(b.loss, {w.loss[2], w.loss[3]}, "loss after resuming single-process");
    expect_same_checkpoint(zero_out + "/final", ref_out + "/final");
    expect_same_checkpoint(ref_out + "/final", whole_out + "/final");
    fs::remove_all(corpus);
  }
  world.barrier();
}

}  // namespace
}  // namespace moex::train
